"""Is SAL just curvature? The atlas correlation table on the bundled demo.

Copies the demo runs to --work (the bundle is never written; a rerun resumes from the copies), then
computes with `ulviz.measure.sharpness`:

- the weight measures (norm, distance from init) at every SAL epoch of every run;
- the data measures (top Hessian eigenvalue, Hutchinson trace, adaptive sharpness) at --data-epochs
  of --data-methods, on the first --subset images each run trained on (protected for a protected
  run), with few iterations (--power-iters, --probes, --ascent-steps) to fit a CPU;

and tabulates the Spearman rank correlation of each measure with the run's stored SAL over the
(epoch, layer) cells both have, and which layers each ranks highest.

    .venv/bin/python benchmarks/sharpness_atlas.py --out benchmarks/results/sharpness-atlas-cifar10-cpu.md
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ulviz import open_run  # noqa: E402
from ulviz.measure.sharpness import (SharpnessConfig, atlas_frames, compute_run_sharpness, sal_correlations,
                                     sharpest_layers)
from layer_surgery import markdown  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default=str(ROOT / "data" / "demo"))
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "runs" / "sharpness_atlas"),
                   help="where the run copies (and their stored measures) live")
    p.add_argument("--methods", default="clean,em-class,lsp,ops,tap", help="runs for the weight measures")
    p.add_argument("--data-methods", default="clean,lsp,ops", help="runs for the data measures")
    p.add_argument("--data-epochs", default="16", help="epochs of the data measures")
    p.add_argument("--subset", type=int, default=64)
    p.add_argument("--power-iters", type=int, default=6)
    p.add_argument("--probes", type=int, default=2)
    p.add_argument("--ascent-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_cfg = SharpnessConfig(measures=("eig", "trace", "adaptive"), subset=args.subset, batch_size=64,
                               power_iters=args.power_iters, tol=1e-2, probes=args.probes,
                               ascent_steps=args.ascent_steps)
    tables, tops = [], {}
    for method in args.methods.split(","):
        path = work / f"{method}.h5"
        if not path.exists() or open_run(path).created != open_run(Path(args.demo) / f"{method}.h5").created:
            shutil.copy2(Path(args.demo) / f"{method}.h5", path)  # a regenerated demo replaces stale copies
        compute_run_sharpness(path, SharpnessConfig(measures=("norm", "dist_init")), device="cpu")
        if method in args.data_methods.split(","):
            compute_run_sharpness(path, data_cfg, epochs=[int(e) for e in args.data_epochs.split(",")], device="cpu")
        run = open_run(path)
        from ulviz.store.analyses import read_sharpness
        frames = atlas_frames(read_sharpness(path), run.layer_names)
        tables.append(sal_correlations(frames, run.sal_frame()).assign(run=method))
        tops[method] = sharpest_layers(frames, run.sal_frame(), k=3)
        print(f"{method}: done at {time.perf_counter() - start:.0f} s", flush=True)
    table = pd.concat(tables)[["run", "measure", "label", "rho_all", "rho_per_epoch", "epochs"]]
    seconds = time.perf_counter() - start
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for m, t in tops.items():
        print(m, "\n", t.to_string())
    if args.out:
        write(Path(args.out), args, table, tops, seconds, data_cfg)


def write(path: Path, args, table, tops, seconds, cfg) -> None:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    text = [
        "# Sharpness atlas on the demo: SAL against curvature, adaptive sharpness and norms",
        "",
        f"Command: `python benchmarks/sharpness_atlas.py --methods {args.methods} --data-methods {args.data_methods} "
        f"--data-epochs {args.data_epochs} --subset {args.subset} --power-iters {args.power_iters} --probes "
        f"{args.probes} --ascent-steps {args.ascent_steps} --threads {args.threads} --out {path}`  ",
        f"Code revision {rev}; date 2026-12-04 (run {date.today()}); {seconds:.0f} s on {args.threads} CPU threads "
        f"(a machine shared with other jobs). Seed {cfg.seed} (start vectors and probes, per layer by its name). "
        f"Data measures on the first {cfg.subset} training images each run trained on, power iteration up to "
        f"{cfg.power_iters} steps (tol {cfg.tol}), {cfg.probes} Hutchinson probes, adaptive sharpness rho "
        f"{cfg.rho} with {cfg.ascent_steps} ascent steps: rough estimates sized for 2 busy cores.",
        "",
        "`rho_all`: Spearman correlation with SAL over all (epoch, layer) cells both have; `rho_per_epoch`: the mean "
        "over epochs of the correlation across layers; `epochs`: how many epochs both have.",
        "",
        markdown(table),
        "",
        "## The three layers each measure ranks highest (mean over its epochs)",
        "",
    ]
    for m, t in tops.items():
        text += [f"**{m}**", "", markdown(t.reset_index()), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
