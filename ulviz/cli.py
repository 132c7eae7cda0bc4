"""The `ulviz` command: train runs, inspect run files, list what the registries hold."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from .core.config import (DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig, check_numbers,
                          parse_param)
from .data.datasets import list_datasets
from .core.errors import UlvizError
from .models.registry import list_models
from .protect.poisons import list_budgets, list_methods
from .core.provenance import __version__
from .data.recipes import AUGMENTATIONS, apply_recipe, default_recipe, list_recipes
from .data.tasks import list_tasks
from .protect.defenses import list_defenses, parse_defense


def _param(text: str) -> tuple[str, object]:
    try:
        return parse_param(text)
    except UlvizError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _UsageError(UlvizError):
    """A command line argparse refused (an unknown choice, a value of the wrong type)."""


class _Parser(argparse.ArgumentParser):
    """argparse, except that a bad argument is one line naming it (and, for a choice, the
    choices), not the command's whole usage: the README promises one line and exit 2."""

    def error(self, message: str):
        raise _UsageError(f"{self.prog.removeprefix('ulviz ')}: {message} (see `{self.prog} --help`)")


def _count(minimum: int):
    """An argparse type: an integer of at least `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ulviz", description=__doc__)
    p.add_argument("--version", action="version", version=f"ulviz {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (optionally on protected data) into a run file")
    d, tc = DataConfig(), TrainConfig()
    t.add_argument("--out", help="run file to write (.h5)")
    t.add_argument("--resume", metavar="RUN.h5", help="continue an interrupted run file from its last finished epoch")
    t.add_argument("--name", help="run label (default: the poison method)")
    t.add_argument("--dataset", default=d.name, choices=list_datasets())
    t.add_argument("--data-dir", help="directory (or .npz file) for datasets read from local files")
    t.add_argument("--allow-pickle", action="store_true", help="allow the CIFAR python (pickle) layout")
    t.add_argument("--train-limit", type=int, help="use only the first N training samples")
    t.add_argument("--test-limit", type=int, help="use only the first N test samples")
    t.add_argument("--model", default=ModelConfig().name, choices=list_models())
    t.add_argument("--width", type=int, help="model base width")
    t.add_argument("--poison", default="clean", choices=list_methods(), help="unlearnable method")
    t.add_argument("--poison-ratio", type=float, default=1.0, help="fraction of training samples protected")
    t.add_argument("--poison-seed", type=int, default=0)
    t.add_argument("--poison-param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. eps=0.0314)")
    t.add_argument("--budget", default="standard", choices=list_budgets(),
                   help="budget convention: the papers' (standard), scaled to the image's energy, or MNIST's L-inf 0.3")
    t.add_argument("--recipe", choices=list_recipes(),
                   help="training recipe (default: paper on cifar10/cifar100, quick elsewhere); the flags below override it")
    t.add_argument("--optimizer", choices=["sgd", "adam"], help="default: the recipe's")
    t.add_argument("--lr", type=float, help="default: the recipe's")
    t.add_argument("--momentum", type=float, help="default: the recipe's")
    t.add_argument("--weight-decay", type=float, help="default: the recipe's")
    t.add_argument("--schedule", choices=["constant", "cosine", "step"], help="default: the recipe's")
    t.add_argument("--batch-size", type=int, help="default: the recipe's")
    t.add_argument("--augment", choices=list(AUGMENTATIONS), help="training augmentation (default: the recipe's)")
    t.add_argument("--defense", action="append", default=[], metavar="NAME[:KEY=VALUE,...]",
                   help="a trainer's defense, repeatable, applied in order: jpeg, grayscale, iss (once, on the "
                        "training images), cutout, mixup, cutmix (on every batch); e.g. --defense jpeg:quality=10")
    t.add_argument("--task", default=tc.task, choices=list_tasks(),
                   help="what is learned from the (maybe protected) images: classify (the default), rotation "
                        "(4-way rotation prediction), segment (foreground masks of grayscale digits; model fcn)")
    t.add_argument("--epochs", type=int, default=tc.epochs)
    t.add_argument("--seed", type=int, default=tc.seed)
    t.add_argument("--device", default=tc.device, help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--sal", default="fast", choices=["exact", "fast", "none"],
                   help="per-layer SAL after every epoch, so the run reaches the SAL and UD pages. Default, as in "
                        "the dashboard's form: fast (the search linearized into a few projected gradient steps "
                        "per layer, on the first 1024 samples: cheap on any dataset). exact: the paper's "
                        "10-round search over the whole split, about 20 passes per layer per epoch, slow on "
                        "natural images (limit it with --sal-subset, or compute it afterwards on chosen epochs "
                        "with `ulviz sal`). Compare UD only between runs of one estimator")
    _sal_options(t)
    t.add_argument("--overwrite", action="store_true", help="replace an existing run file")
    t.add_argument("--config", help="a RunConfig as JSON (a file); replaces every other training option")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("info", help="print a run file's config and metrics")
    i.add_argument("run", help="run file (.h5)")
    i.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("list", help="list datasets, models and unlearnable methods")

    ve = sub.add_parser("verify", help="check a run file's input digests and retrain its first epochs to compare "
                                       "(exit 0: all matches, 1: something differs, 2: bad input)")
    ve.add_argument("run", help="run file (.h5)")
    ve.add_argument("--epochs", type=int, default=1, help="epochs to retrain and compare (default 1)")
    ve.add_argument("--tolerance", type=float, default=0.0,
                    help="largest |difference| of a metric or weight counted as equal (default 0: exact)")
    ve.add_argument("--threads", type=int, help="CPU threads to retrain on (default: the count the file recorded)")

    po = sub.add_parser("poison", help="generate (and cache) a protected training set")
    po.add_argument("--dataset", default=DataConfig().name, choices=list_datasets())
    po.add_argument("--data-dir")
    po.add_argument("--allow-pickle", action="store_true")
    po.add_argument("--train-limit", type=int)
    po.add_argument("--method", required=True, choices=list_methods())
    po.add_argument("--ratio", type=float, default=1.0)
    po.add_argument("--seed", type=int, default=0)
    po.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE")
    po.add_argument("--budget", default="standard", choices=list_budgets())
    po.add_argument("--device", default="auto")
    po.add_argument("--out", help="also save the protected training set as .npz (x_train, y_train, indices)")
    po.add_argument("--quiet", action="store_true")

    dm = sub.add_parser("demo", help="regenerate a demo study: cifar10 (the bundled data/demo) or digits (data/demo-digits)")
    dm.add_argument("--study", default="cifar10", help="cifar10 (about an hour on 2 CPU cores) or digits (minutes)")
    dm.add_argument("--out", help="directory to write the demo runs to (default: the study's, data/demo or data/demo-digits)")
    dm.add_argument("--epochs", type=_count(1), help="default: the study's (16 for cifar10, 30 for digits)")
    dm.add_argument("--methods", help="comma-separated subset of the demo runs (clean is always made)")
    dm.add_argument("--device", help="train and measure there; on cuda, exact SAL after every epoch on the whole training set")
    dm.add_argument("--only", help="comma-separated run files (stems: em-class, rotation-ops) to remake; the others stay")

    s = sub.add_parser("sal", help="compute per-layer SAL for every epoch of a run file (resumable)")
    s.add_argument("run", help="run file (.h5)")
    s.add_argument("--estimator", default="exact", choices=["exact", "fast"])
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--epochs", help="only these epochs, e.g. 10,20,30,40 (default: every trained epoch)")
    _sal_options(s)

    u = sub.add_parser("ud", help="Unlearnable Distance of runs against a clean run")
    u.add_argument("runs", nargs="+", help="run files (or output.log files of the original implementation)")
    u.add_argument("--clean", help="the clean reference (default: the one run among RUNS whose method is clean)")
    u.add_argument("--csv", help="also write the table as CSV")
    u.add_argument("--json", help="also write the result as JSON")

    ct = sub.add_parser("crosstask", help="cross-task study: method x task grid, scores, probe, UD")
    ct.add_argument("--dataset", default="digits", choices=list_datasets())
    ct.add_argument("--data-dir", help="directory (or .npz file) for datasets read from local files")
    ct.add_argument("--model", default="lenet5", choices=list_models())
    ct.add_argument("--width", type=int)
    ct.add_argument("--epochs", type=int, default=10)
    ct.add_argument("--recipe", choices=list_recipes(), help="default: paper on cifar10/cifar100, quick elsewhere")
    ct.add_argument("--methods", default="em,ops", help="comma-separated unlearnable methods (clean is always run)")
    ct.add_argument("--tasks", default="classify,rotation", help=f"comma-separated, of {', '.join(list_tasks())}")
    ct.add_argument("--runs-dir", default="runs/crosstask", help="run files, one per task and method (reused when complete)")
    ct.add_argument("--sal-epochs", help="exact SAL (for UD) at these epochs, e.g. 2,4,8; default: none, no UD")
    ct.add_argument("--sal-subset", type=_count(1), default=128, help="first N training samples for SAL")
    ct.add_argument("--device", default="auto")
    ct.add_argument("--csv", help="also write the table as CSV")

    sw = sub.add_parser("sweep", help="run a grid of runs from a TOML sweep file (resumable), locally or on Ray")
    sw.add_argument("file", help="the sweep file (.toml): out, [base] run config, [axes] dotted field -> values")
    sw.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="local: separate processes on this machine (default); ray: one Ray task per run")
    sw.add_argument("--parallel", type=_count(1), default=1, help="local executor: runs at a time (default 1)")
    sw.add_argument("--address", help="ray executor: the cluster (auto, or HOST:PORT); default: a local Ray instance")
    sw.add_argument("--retry-failed", action="store_true", help="also rerun runs that failed or diverged before")
    sw.add_argument("--status", action="store_true", help="only print each run's state, run nothing")
    sw.add_argument("--dry-run", action="store_true", help="only expand the file and print the planned runs")
    pr = sub.add_parser("probe", help="linear probe: class information in a run's penultimate features")
    pr.add_argument("run", help="run file (.h5)")
    pr.add_argument("--epoch", type=int, default=-1, help="epoch whose weights to probe (default: the last)")

    ls = sub.add_parser("landscape", help="loss landscape of a run file (cached in it, resumable)")
    ls.add_argument("run", help="run file (.h5)")
    ls.add_argument("--kind", default="plane", choices=["line", "plane", "interp", "pca"])
    ls.add_argument("--resolution", type=_count(2), default=41, help="points per axis")
    ls.add_argument("--range", type=float, nargs="+", metavar="X",
                    help="axis range LOW HIGH (default -1 1; interp -0.5 1.5); for pca one margin (default 0.25)")
    ls.add_argument("--normalization", default="filter", choices=["filter", "layer", "none"])
    ls.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    ls.add_argument("--keep-biasbn", action="store_true", help="let directions move biases and batch-norm too")
    ls.add_argument("--layer", help="restrict the directions to one weight tensor (e.g. conv1.weight)")
    ls.add_argument("--split", default="test", choices=["train", "clean", "test"],
                    help="data: what the run trained on, clean train, or clean test")
    ls.add_argument("--subset", type=_count(1), help="first N samples only")
    ls.add_argument("--epoch", type=int, default=-1, help="weights at this epoch (default: the last)")
    ls.add_argument("--other", help="interp: end at this run's final weights (same architecture)")
    ls.add_argument("--coarse", type=_count(2), help="compute a coarse sub-grid first (e.g. 11 for 41)")
    ls.add_argument("--device", default="auto")
    ls.add_argument("--csv", help="also write the points as CSV")
    ls.add_argument("--quiet", action="store_true")

    pa = sub.add_parser("paths", help="optimization paths: PCA of the weight path, per-layer divergence")
    pa.add_argument("run", help="run file (.h5)")
    pa.add_argument("other", nargs="?", help="a second run from the same initialization (e.g. poisoned)")
    pa.add_argument("--layer", help="the path of one tensor only")
    pa.add_argument("--csv", help="also write the coordinates as CSV")
    _atlas_parsers(sub)
    return p


def _sal_options(p: argparse.ArgumentParser) -> None:
    c = SALConfig()
    p.add_argument("--sal-iters", type=int, default=c.iters, help="rounds of the min/max search")
    p.add_argument("--sal-lr-min", type=float, default=c.lr_min)
    p.add_argument("--sal-lr-max", type=float, default=c.lr_max)
    p.add_argument("--sal-eps", type=float, default=c.eps, help="relative radius of the ball")
    p.add_argument("--sal-batch-size", type=int, default=c.batch_size)
    p.add_argument("--sal-split", default=c.split, choices=["train", "test"])
    p.add_argument("--sal-subset", type=int, help="first N samples only")
    p.add_argument("--sal-shuffle", action="store_true")
    p.add_argument("--sal-seed", type=int, default=c.seed)


def _sal_config(args, estimator: str) -> SALConfig:
    return SALConfig(estimator, args.sal_iters, args.sal_lr_min, args.sal_lr_max, args.sal_eps, args.sal_batch_size,
                     args.sal_split, args.sal_subset, args.sal_shuffle, args.sal_seed)


def _train(args) -> int:
    from .train.loop import resume, train

    if args.resume:
        return _report(resume(args.resume, progress=not args.quiet), args.resume)
    if not args.out:
        raise UlvizError("train needs --out RUN.h5 (or --resume RUN.h5)")
    config = _config_file(args.config) if args.config else RunConfig(
        name=args.name or args.poison,
        data=DataConfig(args.dataset, args.data_dir, args.allow_pickle, args.train_limit, args.test_limit),
        poison=PoisonConfig(args.poison, args.poison_ratio, args.poison_seed, dict(args.poison_param), args.budget),
        model=ModelConfig(args.model, args.width),
        train=apply_recipe(TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device, task=args.task,
                                       defenses=[parse_defense(d) for d in args.defense]),
                           args.recipe or default_recipe(args.dataset), args.dataset,
                           optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                           weight_decay=args.weight_decay, schedule=args.schedule, batch_size=args.batch_size,
                           augment=args.augment),
        sal=_sal_config(args, args.sal),
    )
    result = train(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
    return _report(result, args.out)


def _config_file(path: str) -> RunConfig:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UlvizError(f"{path}: cannot read the config ({e.strerror})") from None
    return RunConfig.from_json(text)


def _report(result, out) -> int:
    last = result.history[-1]
    print(f"{result.status}: {out}  epoch {last['epoch']}  train_acc {last['train_acc']:.4f}  "
          f"test_acc {last['test_acc']:.4f}")
    return 0 if result.status == "complete" else 3


def _info(args) -> int:
    from .store.runs import open_run

    run = open_run(args.run)
    if args.json:
        print(json.dumps({"path": str(run.path), "status": run.status, "message": run.message,
                          "config": run.config.to_dict(), "layers": run.layer_names,
                          "metrics": run.metrics.to_dict(orient="list"), "provenance": run.provenance or None,
                          "stored_protection": run.protection_info or None}))
        return 0
    print(f"run      {run.path}")
    print(f"name     {run.name}   status {run.status}{'  (' + run.message + ')' if run.message else ''}")
    print(f"created  {run.created} by ulviz {run.ulviz_version}")
    c = run.config
    print(f"data     {c.data.name}  model {c.model.name}  poison {c.poison.method} (ratio {c.poison.ratio}, "
          f"budget {c.poison.budget})")
    print(f"train    recipe {c.train.recipe}: {c.train.optimizer} lr {c.train.lr} {c.train.schedule}  "
          f"batch {c.train.batch_size}  augment {c.train.augment}  epochs {run.epochs_done}/{c.train.epochs}  "
          f"seed {c.train.seed}")
    print(f"task     {c.train.task}   defenses {', '.join(d['name'] + (':' + ','.join(f'{k}={v}' for k, v in d['params'].items()) if d['params'] else '') for d in c.train.defenses) or 'none'}")
    print(f"layers   {', '.join(run.layer_names)}")
    print(f"SAL      {len(run.sal_epochs)} epoch(s)")
    for line in _provenance_lines(run):
        print(line)
    print(run.metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _provenance_lines(run) -> list[str]:
    """What the run file records of how it was made; "not recorded" for files older than that."""
    env, digests = run.provenance.get("environment"), run.provenance.get("digests")
    if env is None:
        return ["made with  not recorded (written before ulviz recorded provenance)"]
    revision = env.get("code_revision")
    code = "not a git checkout" if revision is None else f"{revision[:12]}{' (dirty tree)' if env.get('code_dirty') else ''}"
    stored = run.protection_info
    return [
        f"made with  python {env.get('python')}  torch {env.get('torch')}  numpy {env.get('numpy')}  "
        f"ulviz {env.get('ulviz')}  code {code}",
        f"device     {env.get('device')}  threads {env.get('torch_threads')}  deterministic algorithms "
        f"{env.get('deterministic_algorithms')}  cudnn deterministic {env.get('cudnn_deterministic')} "
        f"benchmark {env.get('cudnn_benchmark')}",
        f"inputs     clean sha256 {str(digests.get('clean_train'))[:16]}  protected (as trained) sha256 "
        f"{str(digests.get('protected_train'))[:16]}  poison key {digests.get('poison_key')}",
        "protection " + (f"stored in the file ({stored['encoding']}, {stored['bytes'] / 1e6:.2f} MB), generated on "
                         f"{digests.get('poison_generation_threads')} thread(s)" if stored
                         else "regenerated on demand and checked against its digest"),
    ]


def _verify(args) -> int:
    from .train.verify import verify_run

    report = verify_run(args.run, args.epochs, args.tolerance, args.threads)
    print(report.text())
    return 0 if report.ok else 1


def _sal(args) -> int:
    from .measure.sal_runs import compute_run_sal

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
    run = compute_run_sal(args.run, _sal_config(args, args.estimator), device=args.device, progress=progress,
                          epochs=epochs)
    if bar is not None:
        bar.close()
    print(f"{args.run}: SAL ({args.estimator}) for {len(run.sal_epochs)} epoch(s) x {len(run.layer_names)} layers")
    # layers as rows, epochs as columns: a ResNet's 21 layers across a terminal wrapped badly
    table = run.sal_frame().T.rename_axis("layer / epoch")
    print(table.to_string(float_format=lambda v: f"{v:.3e}"))
    return 0


def _crosstask(args) -> int:
    from .studies.crosstask import crosstask_table, grid_configs, run_grid

    base = RunConfig(name="clean", data=DataConfig(args.dataset, args.data_dir),
                     model=ModelConfig(args.model, args.width),
                     train=apply_recipe(TrainConfig(epochs=args.epochs, device=args.device),
                                        args.recipe or default_recipe(args.dataset), args.dataset))
    methods = {m: PoisonConfig(m) for m in args.methods.split(",") if m and m != "clean"}
    configs = grid_configs(base, methods, [t for t in args.tasks.split(",") if t])
    sal = SALConfig(estimator="exact", subset=args.sal_subset) if args.sal_epochs else None
    epochs = [int(e) for e in args.sal_epochs.split(",")] if args.sal_epochs else None
    paths = run_grid(configs, args.runs_dir, sal, epochs, say=lambda t: print(t, flush=True))
    table = crosstask_table(paths)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("ratio = score / the clean run's of the same task; probe = linear probe on the clean images' classes; "
          "UD against the clean run of the same task")
    if args.csv:
        table.to_csv(args.csv, index=False)
    return 0


def _probe(args) -> int:
    from .measure.probe import linear_probe

    r = linear_probe(args.run, args.epoch)
    print(f"linear probe of {args.run} at epoch {r.epoch} ({r.features} features, clean images, true classes): "
          f"train {r.train_acc:.4f}  clean test {r.test_acc:.4f}")
    return 0


def _ud(args) -> int:
    from .measure.ud import choose_clean, load_sal_source, ud_table
    from .measure.seeds import seed_summary, seed_table, summary_text

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


def _demo(args) -> int:
    from .studies.demo import make_demo
    from .measure.ud import ud_table

    paths = make_demo(args.out, args.epochs, methods=args.methods.split(",") if args.methods else None,
                      study=args.study, device=args.device, only=args.only.split(",") if args.only else None)
    table, result = ud_table(paths[0], paths[1:])
    print(f"threshold {result.threshold:.6f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _poison(args) -> int:
    import numpy as np

    from .data.datasets import load_dataset
    from .protect.poisons import make_poison

    dataset = load_dataset(DataConfig(args.dataset, args.data_dir, args.allow_pickle, args.train_limit))
    config = PoisonConfig(args.method, args.ratio, args.seed, dict(args.param), args.budget)
    check_numbers(config)
    poison = make_poison(config, dataset, device=args.device, progress=not args.quiet)
    delta = (poison.x_train - dataset.x_train).flatten(1)
    print(f"{args.method}: {len(poison.indices)}/{len(dataset.x_train)} samples protected; "
          f"max |delta| {delta.abs().max():.4f}, max L2 {delta.norm(dim=1).max():.4f}"
          + (f"; cached at {poison.info['cached']}" if "cached" in poison.info else ""))
    if args.out:
        np.savez(args.out, x_train=poison.x_train.numpy(), y_train=dataset.y_train.numpy(), indices=poison.indices.numpy())
        print(f"saved {args.out}")
    return 0


def _list(args) -> int:
    from .protect.poisons import method_info

    print("datasets:", ", ".join(list_datasets()))
    print("models:  ", ", ".join(list_models()))
    print("tasks:   ", ", ".join(list_tasks()))
    print("defenses:", ", ".join(list_defenses()))
    print("recipes: ", ", ".join(list_recipes()), "(default: paper on cifar10/cifar100, quick elsewhere)")
    print("budgets: ", ", ".join(list_budgets()))
    print("unlearnable methods:")
    for name in list_methods():
        m = method_info(name)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}=None ({m.kinds[k].__name__})" if v is None
                           else f"{k}={v}" for k, v in m.defaults.items())
        print(f"  {name:7s} {m.summary}" + (f"\n          params: {params}" if params else ""))
    return 0


def _landscape(args) -> int:
    import numpy as np
    import pandas as pd

    from .measure.landscape.runs import run_landscape

    span = None
    if args.range:
        if args.kind == "pca":
            span = args.range[0]
        elif len(args.range) != 2:
            raise UlvizError("--range takes two numbers, LOW HIGH (one margin for --kind pca)")
        else:
            span = tuple(args.range)
    bar = _bar(args.quiet, "landscape")
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

    from .store.runs import open_run
    from .measure.trajectory import divergence, divergence_summary, layer_path, pca_plane

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


def _bar(quiet: bool, desc: str):
    """A progress(done, total) callback drawing a tqdm bar, or None when quiet."""
    if quiet:
        return None
    from tqdm import tqdm
    state = {}

    def progress(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="pt")
        state["bar"].update(done - state["bar"].n)
    progress.close = lambda: state["bar"].close() if "bar" in state else None
    return progress


def _sigterm(signum, frame):
    # a job cancelled from the dashboard gets SIGTERM: unwind like Ctrl-C so the status is written
    raise KeyboardInterrupt


def _sweep(args) -> int:
    from .studies.sweep import load_sweep, run_sweep, status_line, sweep_status, sweep_ud
    from .measure.seeds import summary_text

    sweep = load_sweep(args.file)
    if args.dry_run:
        for run in sweep.runs:
            print(f"{run.name}\t{run.path}")
        print(f"{len(sweep.runs)} runs into {sweep.out}")
        return 0
    if args.status:
        rows = sweep_status(sweep)
        for r in rows:
            print(f"{r['run']:<40} {r['state']:<12} {r['epoch']}/{r['epochs']}")
        print(status_line(rows))
        return 0
    rows = run_sweep(sweep, args.executor, args.parallel, args.retry_failed, args.address,
                     say=lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True))
    table, summary = sweep_ud(sweep)
    if len(table):
        table.to_csv(sweep.out / "ud.csv", index=False)
        summary.to_csv(sweep.out / "ud-summary.csv", index=False)
        print(summary_text(summary).to_string(index=False))
        print("mean over seeds [95% t interval]; acc_last: mean of the last 4 trained epochs; ratio: to the clean twin")
        print(f"tables: {sweep.out / 'ud.csv'} (per run), {sweep.out / 'ud-summary.csv'} (mean, interval, std over seeds)")
    return 0 if all(r["state"] == "complete" for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:
        print(f"ulviz: error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        commands = {"train": _train, "info": _info, "list": _list, "sal": _sal, "ud": _ud, "demo": _demo,
                    "poison": _poison, "landscape": _landscape, "paths": _paths, "probe": _probe,
                    "crosstask": _crosstask, "sweep": _sweep, "sharpness": _sharpness, "surgery": _surgery,
                    "verify": _verify}
        rc = commands[args.command](args)
        sys.stdout.flush()  # a closed pipe shows up here, in our handler, rather than at exit
        return rc
    except UlvizError as e:
        print(f"ulviz: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ulviz: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ulviz info RUN | head`): not an error of ours
        # point stdout at devnull so the interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# -- the sharpness atlas and layer surgery ---------------------------------------------------

def _atlas_parsers(sub) -> None:
    from .measure.sharpness import MEASURES, SharpnessConfig
    from .measure.surgery import OPS, SurgeryConfig

    c = SharpnessConfig()
    sh = sub.add_parser("sharpness", help="per-layer Hessian eigenvalue and trace, adaptive sharpness and norms of "
                                          "a run file's epochs (stored in it, resumable)")
    sh.add_argument("run", help="run file (.h5)")
    sh.add_argument("--epochs", help="comma-separated epochs (default: those with SAL, else the last)")
    sh.add_argument("--measures", default=",".join(MEASURES), help=f"comma-separated, of: {', '.join(MEASURES)}")
    sh.add_argument("--subset", type=_count(1), default=c.subset, help="first N samples of the data")
    sh.add_argument("--batch-size", type=_count(1), default=c.batch_size)
    sh.add_argument("--power-iters", type=_count(1), default=c.power_iters, help="most power-iteration steps (eig)")
    sh.add_argument("--tol", type=float, default=c.tol, help="relative change that stops the power iteration")
    sh.add_argument("--probes", type=_count(1), default=c.probes, help="Hutchinson probes (trace)")
    sh.add_argument("--rho", type=float, default=c.rho, help="radius of the |w|-scaled ball (adaptive)")
    sh.add_argument("--eta", type=float, default=c.eta, help="added to |w| in the scaling (adaptive)")
    sh.add_argument("--ascent-steps", type=_count(1), default=c.ascent_steps, help="projected ascent steps (adaptive)")
    sh.add_argument("--split", default=c.split, choices=["train", "test"])
    sh.add_argument("--seed", type=_count(0), default=c.seed)
    sh.add_argument("--device", default="auto")
    sh.add_argument("--quiet", action="store_true")

    s = SurgeryConfig()
    su = sub.add_parser("surgery", help="transplant, reset or freeze layers of a protected run; clean-test accuracy")
    su.add_argument("run", metavar="PROTECTED.h5", help="the protected run file")
    su.add_argument("--clean", metavar="CLEAN.h5", help="the clean twin (transplant, freeze, sal-diff)")
    su.add_argument("--layers", default=s.layers, metavar="SPEC",
                    help="names or prefixes (layer1,linear), all, none, sal-top:k, sal-bottom:k (most / least "
                         "learnable under the protection) or sal-diff:k (SAL most unlike the clean run's)")
    su.add_argument("--op", default=s.op, choices=list(OPS))
    su.add_argument("--steps", type=_count(0), default=s.steps, help="training steps of reset and freeze")
    su.add_argument("--epoch", type=int, default=s.epoch, help="epoch operated on (-1 = the last)")
    su.add_argument("--data", default=s.data, choices=["clean", "protected"], help="what reset fine-tunes on")
    su.add_argument("--seed", type=_count(0), default=s.seed)
    su.add_argument("--device", default="auto")


def _epoch_list(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(e) for e in text.split(",")]
    except ValueError:
        raise UlvizError(f"--epochs takes comma-separated epoch numbers, got {text!r}") from None


def _sharpness(args) -> int:
    from .measure.sharpness import LABELS, SharpnessConfig, atlas_frames, compute_run_sharpness

    config = SharpnessConfig(tuple(m.strip() for m in args.measures.split(",") if m.strip()), args.subset,
                             args.batch_size, args.power_iters, args.tol, args.probes, args.rho, args.eta,
                             args.ascent_steps, args.split, args.seed)
    bar = _bar(args.quiet, "sharpness epochs")
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
    from .measure.surgery import SurgeryConfig, layer_surgery

    config = SurgeryConfig(args.op, args.layers, args.epoch, args.steps, args.data, args.seed)
    r = layer_surgery(args.run, args.clean, config, device=args.device)
    how = "" if r.op == "transplant" else f", {r.steps} steps on {r.data} data"
    print(f"{r.op} at epoch {r.epoch}{how}: {len(r.layers)} layer(s), {len(r.tensors)} tensor(s)")
    print(f"layers     {', '.join(r.layers) or '(none)'}")
    print(f"clean-test accuracy {r.accuracy:.4f} (loss {r.loss:.4f}); protected run {r.protected_accuracy:.4f}"
          + (f", clean run {r.clean_accuracy:.4f}, restored {r.restored:.1%} of the gap"
             if r.clean_accuracy == r.clean_accuracy else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
