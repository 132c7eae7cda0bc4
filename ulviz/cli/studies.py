"""The commands that run studies: demo, crosstask, sweep."""
from __future__ import annotations

import time

from ..core.config import DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig
from ..data.datasets import list_datasets
from ..data.recipes import apply_recipe, default_recipe, list_recipes
from ..data.tasks import list_tasks
from ..models.registry import list_models
from .common import at_least


def add_demo(sub) -> None:
    """`ulviz demo`: regenerate a demo study."""
    dm = sub.add_parser("demo", help="regenerate a demo study: cifar10 (the bundled data/demo) or digits (data/demo-digits)")
    dm.add_argument("--study", default="cifar10", help="cifar10 (about an hour on 2 CPU cores) or digits (minutes)")
    dm.add_argument("--out", help="directory to write the demo runs to (default: the study's, data/demo or data/demo-digits)")
    dm.add_argument("--epochs", type=at_least(1), help="default: the study's (16 for cifar10, 30 for digits)")
    dm.add_argument("--methods", help="comma-separated subset of the demo runs (clean is always made)")
    dm.add_argument("--device", help="train and measure there; on cuda, exact SAL after every epoch on the whole training set")
    dm.add_argument("--only", help="comma-separated run files (stems: em-class, rotation-ops) to remake; the others stay")


def add_crosstask(sub) -> None:
    """`ulviz crosstask`: a method x task study."""
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
    ct.add_argument("--sal-subset", type=at_least(1), default=128, help="first N training samples for SAL")
    ct.add_argument("--device", default="auto")
    ct.add_argument("--csv", help="also write the table as CSV")


def add_sweep(sub) -> None:
    """`ulviz sweep`: a grid of runs from a TOML file."""
    sw = sub.add_parser("sweep", help="run a grid of runs from a TOML sweep file (resumable), locally or on Ray")
    sw.add_argument("file", help="the sweep file (.toml): out, [base] run config, [axes] dotted field -> values")
    sw.add_argument("--executor", default="local", choices=["local", "ray"],
                    help="local: separate processes on this machine (default); ray: one Ray task per run")
    sw.add_argument("--parallel", type=at_least(1), default=1, help="local executor: runs at a time (default 1)")
    sw.add_argument("--address", help="ray executor: the cluster (auto, or HOST:PORT); default: a local Ray instance")
    sw.add_argument("--retry-failed", action="store_true", help="also rerun runs that failed or diverged before")
    sw.add_argument("--status", action="store_true", help="only print each run's state, run nothing")
    sw.add_argument("--dry-run", action="store_true", help="only expand the file and print the planned runs")


def _crosstask(args) -> int:
    from ..studies.crosstask import crosstask_table, grid_configs, run_grid

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


def _demo(args) -> int:
    from ..studies.demo import make_demo
    from ..measure.ud import ud_table

    paths = make_demo(args.out, args.epochs, methods=args.methods.split(",") if args.methods else None,
                      study=args.study, device=args.device, only=args.only.split(",") if args.only else None)
    table, result = ud_table(paths[0], paths[1:])
    print(f"threshold {result.threshold:.6f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _sweep(args) -> int:
    from ..studies.sweep import load_sweep, run_sweep, status_line, sweep_status, sweep_ud
    from ..measure.seeds import summary_text

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


COMMANDS = {"demo": _demo, "crosstask": _crosstask, "sweep": _sweep}
