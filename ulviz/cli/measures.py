"""The commands that measure run files: sal, ud, probe, landscape, paths, sharpness, surgery."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..core.errors import UlvizError
from .common import add_sal_options, at_least, progress_bar, sal_config_from


def add_sal(sub) -> None:
    """`ulviz sal`: SAL of a run file's epochs, afterwards."""
    s = sub.add_parser("sal", help="compute per-layer SAL for every epoch of a run file (resumable)")
    s.add_argument("run", help="run file (.h5)")
    s.add_argument("--estimator", default="exact", choices=["exact", "fast"])
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--epochs", help="only these epochs, e.g. 10,20,30,40 (default: every trained epoch)")
    add_sal_options(s)


def add_ud(sub) -> None:
    """`ulviz ud`: the Unlearnable Distance of runs."""
    u = sub.add_parser("ud", help="Unlearnable Distance of runs against a clean run")
    u.add_argument("runs", nargs="+", help="run files (or output.log files of the original implementation)")
    u.add_argument("--clean", help="the clean reference (default: the one run among RUNS whose method is clean)")
    u.add_argument("--csv", help="also write the table as CSV")
    u.add_argument("--json", help="also write the result as JSON")


def add_probe(sub) -> None:
    """`ulviz probe`: the linear probe of a run's features."""
    pr = sub.add_parser("probe", help="linear probe: class information in a run's penultimate features")
    pr.add_argument("run", help="run file (.h5)")
    pr.add_argument("--epoch", type=int, default=-1, help="epoch whose weights to probe (default: the last)")


def add_landscape(sub) -> None:
    """`ulviz landscape`: a loss landscape of a run file."""
    ls = sub.add_parser("landscape", help="loss landscape of a run file (cached in it, resumable)")
    ls.add_argument("run", help="run file (.h5)")
    ls.add_argument("--kind", default="plane", choices=["line", "plane", "interp", "pca"])
    ls.add_argument("--resolution", type=at_least(2), default=41, help="points per axis")
    ls.add_argument("--range", type=float, nargs="+", metavar="X",
                    help="axis range LOW HIGH (default -1 1; interp -0.5 1.5); for pca one margin (default 0.25)")
    ls.add_argument("--normalization", default="filter", choices=["filter", "layer", "none"])
    ls.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    ls.add_argument("--keep-biasbn", action="store_true", help="let directions move biases and batch-norm too")
    ls.add_argument("--layer", help="restrict the directions to one weight tensor (e.g. conv1.weight)")
    ls.add_argument("--split", default="test", choices=["train", "clean", "test"],
                    help="data: what the run trained on, clean train, or clean test")
    ls.add_argument("--subset", type=at_least(1), help="first N samples only")
    ls.add_argument("--epoch", type=int, default=-1, help="weights at this epoch (default: the last)")
    ls.add_argument("--other", help="interp: end at this run's final weights (same architecture)")
    ls.add_argument("--coarse", type=at_least(2), help="compute a coarse sub-grid first (e.g. 11 for 41)")
    ls.add_argument("--device", default="auto")
    ls.add_argument("--csv", help="also write the points as CSV")
    ls.add_argument("--quiet", action="store_true")


def add_paths(sub) -> None:
    """`ulviz paths`: optimization paths and per-layer divergence."""
    pa = sub.add_parser("paths", help="optimization paths: PCA of the weight path, per-layer divergence")
    pa.add_argument("run", help="run file (.h5)")
    pa.add_argument("other", nargs="?", help="a second run from the same initialization (e.g. poisoned)")
    pa.add_argument("--layer", help="the path of one tensor only")
    pa.add_argument("--csv", help="also write the coordinates as CSV")


def add_sharpness(sub) -> None:
    """`ulviz sharpness`: the per-layer sharpness atlas of a run file."""
    from ..measure.sharpness import MEASURES, SharpnessConfig

    c = SharpnessConfig()
    sh = sub.add_parser("sharpness", help="per-layer Hessian eigenvalue and trace, adaptive sharpness and norms of "
                                          "a run file's epochs (stored in it, resumable)")
    sh.add_argument("run", help="run file (.h5)")
    sh.add_argument("--epochs", help="comma-separated epochs (default: those with SAL, else the last)")
    sh.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated, of: {', '.join(MEASURES)}")
    sh.add_argument("--subset", type=at_least(1), default=c.subset, help="first N samples of the data")
    sh.add_argument("--batch-size", type=at_least(1), default=c.batch_size)
    sh.add_argument("--power-iters", type=at_least(1), default=c.power_iters, help="most power-iteration steps (eig)")
    sh.add_argument("--tol", type=float, default=c.tol, help="relative change that stops the power iteration")
    sh.add_argument("--probes", type=at_least(1), default=c.probes, help="Hutchinson probes (trace)")
    sh.add_argument("--rho", type=float, default=c.rho, help="radius of the |w|-scaled ball (adaptive)")
    sh.add_argument("--eta", type=float, default=c.eta, help="added to |w| in the scaling (adaptive)")
    sh.add_argument("--ascent-steps", type=at_least(1), default=c.ascent_steps, help="projected ascent steps (adaptive)")
    sh.add_argument("--split", default=c.split, choices=["train", "test"])
    sh.add_argument("--seed", type=at_least(0), default=c.seed)
    sh.add_argument("--device", default="auto")
    sh.add_argument("--quiet", action="store_true")


def add_surgery(sub) -> None:
    """`ulviz surgery`: transplant, reset or freeze layers of a protected run."""
    from ..measure.surgery import OPS, SurgeryConfig

    s = SurgeryConfig()
    su = sub.add_parser("surgery", help="transplant, reset or freeze layers of a protected run; clean-test accuracy")
    su.add_argument("run", metavar="PROTECTED.h5", help="the protected run file")
    su.add_argument("--clean", metavar="CLEAN.h5", help="the clean twin (transplant, freeze, sal-diff)")
    su.add_argument("--layers", default=s.layers, metavar="SPEC",
                    help="names or prefixes (layer1,linear), all, none, sal-top:k, sal-bottom:k (most / least "
                         "learnable under the protection) or sal-diff:k (SAL most unlike the clean run's)")
    su.add_argument("--op", default=s.op, choices=list(OPS))
    su.add_argument("--steps", type=at_least(0), default=s.steps, help="training steps of reset and freeze")
    su.add_argument("--epoch", type=int, default=s.epoch, help="epoch operated on (-1 = the last)")
    su.add_argument("--data", default=s.data, choices=["clean", "protected"], help="what reset fine-tunes on")
    su.add_argument("--seed", type=at_least(0), default=s.seed)
    su.add_argument("--device", default="auto")


def _sal(args) -> int:
    from ..measure.sal_runs import compute_run_sal

    bar = None
    def progress(done, total):
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="SAL epochs", unit="epoch")
        bar.update(1)
    epochs = None
    if args.epochs:
        try:
            epochs = [int(e) for e in args.epochs.split(",")]
        except ValueError:
            raise UlvizError(f"--epochs takes comma-separated epoch numbers, got {args.epochs!r}") from None
    run = compute_run_sal(args.run, sal_config_from(args, args.estimator), device=args.device, progress=progress,
                          epochs=epochs)
    if bar is not None:
        bar.close()
    print(f"{args.run}: SAL ({args.estimator}) for {len(run.sal_epochs)} epoch(s) x {len(run.layer_names)} layers")
    # layers as rows, epochs as columns: a ResNet's 21 layers across a terminal wrapped badly
    table = run.sal_frame().T.rename_axis("layer / epoch")
    print(table.to_string(float_format=lambda v: f"{v:.3e}"))
    return 0


def _probe(args) -> int:
    from ..measure.probe import linear_probe

    r = linear_probe(args.run, args.epoch)
    print(f"linear probe of {args.run} at epoch {r.epoch} ({r.features} features, clean images, true classes): "
          f"train {r.train_acc:.4f}  clean test {r.test_acc:.4f}")
    return 0


def _ud(args) -> int:
    from ..measure.ud import choose_clean, load_sal_source, ud_table
    from ..measure.seeds import seed_summary, seed_table, summary_text

    sources = [load_sal_source(p) for p in args.runs]
    clean = choose_clean(sources, args.clean)
    table, result = ud_table(clean, [s for s in sources if s is not clean])
    print(f"reference: {clean.path} (clean)")
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"threshold {result.threshold:.6f}   clean learnable layers per epoch {result.clean_count:.3f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    seeds = seed_table(args.runs)
    if len(seeds) and seeds.groupby("variant")["seed"].nunique().max() > 1:
        print("\nover seeds, each run against its clean twin (same config and seed), mean [95% t interval]:")
        print(summary_text(seed_summary(seeds)).to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "threshold": result.threshold, "clean_count": result.clean_count,
            "runs": table.to_dict(orient="records"),
            "per_layer": {k: v.tolist() for k, v in result.per_layer.items()}, "warnings": result.warnings}, indent=2))
    return 0


def _landscape(args) -> int:
    import numpy as np
    import pandas as pd

    from ..measure.landscape.runs import run_landscape

    span = None
    if args.range:
        if args.kind == "pca":
            span = args.range[0]
        elif len(args.range) != 2:
            raise UlvizError("--range takes two numbers, LOW HIGH (one margin for --kind pca)")
        else:
            span = tuple(args.range)
    bar = progress_bar(args.quiet, "landscape")
    land = run_landscape(args.run, args.kind, epoch=args.epoch, resolution=args.resolution, span=span,
                         normalization=args.normalization, seed=args.seed, keep_biasbn=args.keep_biasbn,
                         layer=args.layer, split=args.split, subset=args.subset, other=args.other,
                         coarse=args.coarse, device=args.device, progress=bar)
    if bar:
        bar.close()
    i = np.unravel_index(np.nanargmin(land.loss), land.loss.shape)
    where = ", ".join(f"{land.coords[k][i[k]]:+.3f}" for k in range(len(i)))
    print(f"{args.kind} {'x'.join(str(n) for n in land.loss.shape)} on {args.split}: loss {np.nanmin(land.loss):.4f} "
          f"..{np.nanmax(land.loss):.4f} (lowest at {where}), accuracy {np.nanmin(land.acc):.4f}..{np.nanmax(land.acc):.4f}"
          + (f"; explained variance {', '.join(f'{v:.3f}' for v in land.settings['explained'])}"
             if "explained" in land.settings else ""))
    if args.csv:
        grids = np.meshgrid(*land.coords, indexing="ij")
        cols = {("alpha", "beta")[k]: g.ravel() for k, g in enumerate(grids)}
        pd.DataFrame({**cols, "loss": land.loss.ravel(), "acc": land.acc.ravel()}).to_csv(args.csv, index=False)
        print(f"saved {args.csv}")
    return 0


def _paths(args) -> int:
    import pandas as pd

    from ..store.runs import open_run
    from ..measure.trajectory import divergence, divergence_summary, layer_path, pca_plane

    runs = [open_run(args.run)] + ([open_run(args.other)] if args.other else [])
    plane = layer_path(runs[0], args.layer, runs[1] if args.other else None) if args.layer else pca_plane(runs)
    print(f"PCA plane of {args.layer or 'all weights'}: explained variance "
          f"{plane.explained[0]:.3f}, {plane.explained[1]:.3f}")
    frames = []
    for run, xy in zip(runs, plane.coords):
        frames.append(pd.DataFrame({"run": run.name, "epoch": range(len(xy)), "pc1": xy[:, 0], "pc2": xy[:, 1]}))
    table = pd.concat(frames, ignore_index=True)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.other:
        print("\nper-layer divergence (poisoned vs clean):")
        print(divergence_summary(divergence(*runs)).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"saved {args.csv}")
    return 0


def _epoch_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(e) for e in text.split(",")]
    except ValueError:
        raise UlvizError(f"--epochs takes comma-separated epoch numbers, got {text!r}") from None


def _sharpness(args) -> int:
    from ..measure.sharpness import LABELS, SharpnessConfig, atlas_frames, compute_run_sharpness

    config = SharpnessConfig(tuple(m.strip() for m in args.measures.split(",") if m.strip()), args.subset,
                             args.batch_size, args.power_iters, args.tol, args.probes, args.rho, args.eta,
                             args.ascent_steps, args.split, args.seed)
    bar = progress_bar(args.quiet, "sharpness epochs")
    sharp = compute_run_sharpness(args.run, config, epochs=_epoch_list(args.epochs), device=args.device,
                                  progress=bar)
    if bar is not None:
        bar.close()
    layers = next(iter(sharp.values()))["layers"]
    for m, frame in atlas_frames({m: sharp[m] for m in config.measures}, layers).items():
        print(f"\n{LABELS[m]} ({m}), layers x epochs:")
        print(frame.T.to_string(float_format=lambda v: f"{v:.4g}"))
    return 0


def _surgery(args) -> int:
    from ..measure.surgery import SurgeryConfig, layer_surgery

    config = SurgeryConfig(args.op, args.layers, args.epoch, args.steps, args.data, args.seed)
    r = layer_surgery(args.run, args.clean, config, device=args.device)
    how = "" if r.op == "transplant" else f", {r.steps} steps on {r.data} data"
    print(f"{r.op} at epoch {r.epoch}{how}: {len(r.layers)} layer(s), {len(r.tensors)} tensor(s)")
    print(f"layers     {', '.join(r.layers) or '(none)'}")
    print(f"clean-test accuracy {r.accuracy:.4f} (loss {r.loss:.4f}); protected run {r.protected_accuracy:.4f}"
          + (f", clean run {r.clean_accuracy:.4f}, restored {r.restored:.1%} of the gap"
             if r.clean_accuracy == r.clean_accuracy else ""))
    return 0


COMMANDS = {"sal": _sal, "ud": _ud, "probe": _probe, "landscape": _landscape, "paths": _paths, "sharpness": _sharpness, "surgery": _surgery}
