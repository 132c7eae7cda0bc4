"""How much each unlearnable method hurts, over several training seeds, with UD.

Each method's protection is generated once (poison seed 0, cached on disk by content); the same
model is then trained clean and on each protected set with every training seed. Per method it
prints clean-test accuracy three ways (final, mean of the last 4 trained epochs, peak), each as
its ratio to the clean run of the same seed, and the UD against that clean run (exact SAL post hoc
at --sal-epochs on the first --sal-subset images each run trained on): mean over seeds with a 95%
t interval. The published CIFAR-10 / ResNet-18 figures (the ISS paper's table) stand beside ours.

    .venv/bin/python benchmarks/poison_effect.py --device cuda --workers 12 --out benchmarks/results/x.md
    .venv/bin/python benchmarks/poison_effect.py --dataset digits --model lenet5 --seeds 0,1,2

Run files go to --runs-dir. A run file is reused only when its config, the digest of the images it
trained on and the code revision that wrote it all equal this run's (never on the config alone: an
earlier version of this script protected the images twice under the same config). Training runs
in --workers processes at once: on a GPU the small models leave it mostly idle.

On a CPU the surrogate-based methods use the smaller settings of ulviz.studies.demo.CPU_POISON_SETTINGS;
on a GPU em and tap use their originals' budgets and rem the --rem settings (its original budget is
GPU-hours even on the subset).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "data" / "cifar10-subset"

METHODS = [  # (label, method, params)
    ("clean", "clean", {}), ("random", "random", {}), ("lsp", "lsp", {}), ("ops", "ops", {}), ("ar", "ar", {}),
    ("cuda", "cuda", {}), ("em-class", "em", {"mode": "class"}), ("em", "em", {}), ("tap", "tap", {}),
    ("rem", "rem", {}),
]
# Published reference: test accuracy (%) of ResNet-18 on CIFAR-10 trained on each protection, no
# defense, from the ISS paper (Liu, Zhao, Larson, "Image Shortcut Squeezing", ICML 2023, Table 1).
# Their setting: all 50,000 training images, full ResNet-18, 60 epochs, the methods' own budgets.
REFERENCE = {"clean": 94.68, "em": 21.05, "rem": 25.44, "tap": 8.17, "lsp": 19.07, "ar": 13.28, "ops": 36.55}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", help="default: data/cifar10-subset for cifar10")
    p.add_argument("--model", help="victim (default: resnet18 of width 8 on cifar10, lenet5 elsewhere)")
    p.add_argument("--width", type=int)
    p.add_argument("--surrogate", help="crafting network of em, tap, rem as NAME:WIDTH (default: the victim's "
                   "on a GPU; on a CPU the demo's resnet18:8, so the demo's cached protections are reused)")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seeds", default="0,1,2", help="training seeds (the protections are generated once)")
    p.add_argument("--methods", help="comma-separated labels (clean is always run)")
    p.add_argument("--budget", default="standard", help="budget convention: standard, energy, mnist (L-inf 0.3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once, each in its own process")
    p.add_argument("--runs-dir", default="benchmarks/runs/poison_effect")
    p.add_argument("--sal-epochs", default="10,20,30,40",
                   help="epochs with exact SAL for UD ('all': every epoch; '' for no UD)")
    p.add_argument("--sal-subset", default="512", help="first N images each run trained on ('all': every one)")
    p.add_argument("--rem", default='{"train_epochs": 2, "samples": 1, "pgd_steps": 5, "rho_steps": 3}',
                   help="rem's parameters as JSON (default: the CPU settings; '{}' for the original's)")
    p.add_argument("--out", help="also write the report (markdown) here")
    args = p.parse_args()
    if args.dataset == "cifar10" and not args.data_dir:
        args.data_dir = str(CIFAR)
    width = (args.surrogate or "").partition(":")[2]
    if width and not (width.isdigit() and int(width) > 0):
        p.error(f"--surrogate takes NAME or NAME:WIDTH with a positive width, not {args.surrogate!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        args.sal_subset = None if args.sal_subset == "all" else _positive(args.sal_subset)
        if args.sal_epochs and args.sal_epochs != "all":
            [_positive(v) for v in args.sal_epochs.split(",")]
    except ValueError as e:
        p.error(f"--sal-subset and --sal-epochs take positive whole numbers or 'all': {e}")
    plan = _plan(args, seeds)
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"{len(plan)} runs: {len({c.name for c, _ in plan})} protections x {len(seeds)} seeds", flush=True)
    gen_s = dict(_parallel(_generate, [(c,) for c, _ in plan if c.train.seed == seeds[0]], args.workers))
    # seed by seed, so that an interrupted benchmark has whole seeds; the report is rewritten after
    # every finished run (a run killed by a time limit leaves the table of those before it)
    plan.sort(key=lambda item: (item[0].train.seed, item[0].name != "clean"))
    done = []
    for path, took in _parallel(_train_one, [(c, str(runs_dir / f"{stem}.h5"), args) for c, stem in plan],
                                args.workers, ordered=False):
        done.append(path)
        if args.out and any(Path(p).stem.startswith("clean_") for p in done):
            Path(args.out).write_text(_report(args, seeds, done, gen_s, len(plan)))
    print(f"all runs in {time.perf_counter() - start:.0f} s", flush=True)
    report = _report(args, seeds, done, gen_s, len(plan))
    print(report)
    if args.out:
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"not {text!r}")
    return int(text)


def _sal_epochs(text: str, epochs: int) -> list[int]:
    """The epochs of --sal-epochs that a run of `epochs` epochs has ('all': every one)."""
    every = range(1, epochs + 1)
    return list(every) if text == "all" else [e for e in (int(v) for v in text.split(",")) if e in every]


def _plan(args, seeds):
    """[(config, file stem)] of every (method, seed) run."""
    from ulviz import DataConfig, ModelConfig, PoisonConfig, RunConfig, SALConfig, TrainConfig
    from ulviz.data.recipes import apply_recipe, default_recipe
    from ulviz.studies.demo import CPU_POISON_SETTINGS

    model = args.model or ("resnet18" if args.dataset.startswith("cifar") else "lenet5")
    width = args.width if args.width is not None else (8 if model == "resnet18" and args.model is None else None)
    data = DataConfig(args.dataset, args.data_dir)
    wanted = set(args.methods.split(",")) | {"clean"} if args.methods else None
    surrogate = {"surrogate": model, "surrogate_width": width}
    if args.surrogate:
        name, _, w = args.surrogate.partition(":")
        surrogate = {"surrogate": name, "surrogate_width": int(w) if w else None}
    elif args.device == "cpu":
        from ulviz.studies.demo import SURROGATE as surrogate
    plan = []
    for label, method, params in METHODS:
        if wanted and label not in wanted:
            continue
        if method in ("em", "rem", "tap"):
            settings = CPU_POISON_SETTINGS.get(method, {}) if args.device == "cpu" else {}
            if method == "rem":
                settings = json.loads(args.rem)
            params = {**params, **surrogate, **settings}
        for seed in seeds:
            train = apply_recipe(TrainConfig(epochs=args.epochs, seed=seed, device=args.device),
                                 default_recipe(args.dataset), args.dataset)
            plan.append((RunConfig(name=label, data=data, model=ModelConfig(model, width),
                                   poison=PoisonConfig(method, params=params, budget=args.budget), train=train,
                                   sal=SALConfig("none")), f"{label}_seed-{seed}"))
    return plan


def _parallel(fn, jobs, workers, ordered=True):
    """fn(*job) for every job, in `workers` processes; yields results as they finish unless `ordered`."""
    if workers <= 1:
        results = (fn(*job) for job in jobs)
        return list(results) if ordered else results
    ctx = __import__("multiprocessing").get_context("spawn")  # CUDA cannot be forked into workers
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_quiet_threads, initargs=(workers,))
    futures = [pool.submit(_star, (fn, job)) for job in jobs]
    if ordered:
        with pool:
            return [f.result() for f in futures]

    def finished():
        with pool:
            for f in as_completed(futures):
                yield f.result()
    return finished()


def _star(item):
    fn, job = item
    return fn(*job)


def _quiet_threads(workers: int) -> None:
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _generate(config):
    """(label, generation seconds): the protection made once, into the on-disk cache."""
    from ulviz import load_dataset
    from ulviz.protect.poisons import make_poison
    start = time.perf_counter()
    poison = make_poison(config.poison, load_dataset(config.data), device=config.train.device)
    took = "cached" if "cached" in poison.info else f"{time.perf_counter() - start:.0f} s"
    print(f"protection {config.name}: {took}", flush=True)
    return config.name, took


def _train_one(config, path, args):
    """(path, seconds): train (unless an identical run of this code is there), then exact SAL."""
    from ulviz import SALConfig
    from ulviz.measure.sal_runs import compute_run_sal
    from ulviz.training.loop import train
    from ulviz.training.verify import reusable_run
    start = time.perf_counter()
    if not reusable_run(path, config):  # same config, same code, same input digests
        train(config, path, overwrite=True)
    if args.sal_epochs:
        compute_run_sal(path, SALConfig("exact", subset=args.sal_subset), device=config.train.device,
                        epochs=_sal_epochs(args.sal_epochs, config.train.epochs))
    took = time.perf_counter() - start
    print(f"{Path(path).stem}: {took:.0f} s", flush=True)
    return path, took


def _report(args, seeds, paths, gen_s, planned: int) -> str:
    import torch

    from ulviz.measure.seeds import seed_summary, seed_table, summary_text
    table = seed_table(paths)
    summary = seed_summary(table)
    text = summary_text(summary, ("acc_final", "acc_last", "acc_peak", "ratio_final", "ratio_last", "ratio_peak", "UD"))
    text.insert(2, "protection", [gen_s.get(v, "") for v in text["variant"]])
    ref = REFERENCE.get("clean")
    text["published"] = [f"{REFERENCE[v] / ref:.3f} ({REFERENCE[v]:.1f}%)" if args.dataset == "cifar10" and v in REFERENCE
                         else "" for v in text["variant"]]
    from ulviz.core.provenance import code_revision
    rev, dirty = code_revision()
    rev = rev or "unknown"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else args.device
    cfg = __import__("ulviz").open_run(paths[0]).config
    head = (f"# Poison effect: {cfg.model.name} (width {cfg.model.width}) on {cfg.data.name}, {cfg.train.epochs} "
            f"epochs, recipe {cfg.train.recipe}, budget {args.budget}, seeds {seeds}\n\n"
            f"- command: `python {' '.join(sys.argv)}`\n- code revision: {rev[:12]}{' (dirty tree)' if dirty else '' if dirty is False else ' (tree state unknown)'}\n"
            f"- date: {date.today().isoformat()}; device: {device}; torch {torch.__version__}; "
            f"workers {args.workers}; {len(paths)} of {planned} planned runs finished\n"
            f"{_surrogate_line(paths)}"
            f"- protections generated once (poison seed 0); each seed's run is compared with the clean run of the "
            f"same seed (ratio and UD); mean over seeds [95% t interval]\n"
            f"- accuracy on the clean test set: final epoch, mean of the last 4 trained epochs, best epoch\n"
            f"- UD: exact SAL (10 rounds, lr 0.1, eps 0.05) post hoc at epochs {args.sal_epochs or 'none'} on "
            f"{'all the' if args.sal_subset is None else f'the first {args.sal_subset}'} images each run trained on; threshold: the clean run's 2-means midpoint\n"
            f"- published: the ISS paper's ResNet-18 on all of CIFAR-10 (Table 1, no defense), as a ratio to its "
            f"clean 94.68%; our setting is a 5,085-image subset and a narrower, shorter-trained network\n\n")
    per_run = table[["run", "seed", "acc_final", "acc_last", "acc_peak", "ratio_last", "UD"]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}")
    return head + "```\n" + text.to_string(index=False) + "\n```\n\nPer run:\n\n```\n" + per_run + "\n```\n"


def _surrogate_line(paths) -> str:
    """Which network crafted the surrogate-based protections, and with what settings (one line)."""
    from ulviz import open_run
    for path in paths:
        cfg = open_run(path).config.poison
        if "surrogate" in cfg.params:
            return f"- {cfg.method} and the other surrogate-based methods crafted with: {cfg.params}\n"
    return ""


if __name__ == "__main__":
    main()
