"""How much each unlearnable method hurts: train the same model clean and under each method.

Prints, per method: clean-test accuracy at the last epoch and averaged over the last 5 (the
paper recipe's constant lr 0.1 makes single epochs noisy), its ratio to the clean run's, the final
train accuracy on the protected data (the shortcut learned), and the generation time. Every run
shares the model, seed and recipe. Run files go to --runs-dir, and a complete one is reused, so an
interrupted benchmark resumes; generated poisons come from the on-disk cache when present (the
time is then marked "cached").

    .venv/bin/python benchmarks/poison_effect.py     # CIFAR-10 subset when ../shared/data has it, else digits
    .venv/bin/python benchmarks/poison_effect.py --dataset digits --model lenet5 --recipe quick
    .venv/bin/python benchmarks/poison_effect.py --dataset digits --budget energy

On a CPU the surrogate-based methods run with the smaller settings in CPU_SETTINGS (printed with
the table); on a GPU (--device cuda) with their originals' defaults.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ulviz import DataConfig, ModelConfig, PoisonConfig, RunConfig, TrainConfig, load_dataset, open_run, train
from ulviz.demo import CPU_POISON_SETTINGS as CPU_SETTINGS  # what two CPU cores afford; see ulviz/demo.py
from ulviz.poisons import list_budgets, make_poison
from ulviz.recipes import apply_recipe, default_recipe, list_recipes

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-subset"

METHODS = [  # (label, method, params)
    ("clean", "clean", {}), ("random", "random", {}), ("lsp", "lsp", {}), ("ops", "ops", {}), ("ar", "ar", {}),
    ("cuda", "cuda", {}), ("em/class", "em", {"mode": "class"}), ("em", "em", {}), ("tap", "tap", {}),
    ("rem", "rem", {}), ("random/class", "random", {"mode": "class"}),
]
# the targets: ratio to clean at most (or, for the control, at least)
TARGETS = {"em": ("<=", 0.5), "em/class": ("<=", 0.5), "lsp": ("<=", 0.5), "ops": ("<=", 0.5), "ar": ("<=", 0.5),
           "cuda": ("<=", 0.5), "rem": ("<=", 0.7), "tap": ("<=", 0.7), "random": (">=", 0.9)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    natural = CIFAR.exists()
    p.add_argument("--dataset", default="cifar10" if natural else "digits")
    p.add_argument("--data-dir", help="default: the CIFAR-10 subset in ../shared/data for cifar10")
    p.add_argument("--model", help="victim model (default: resnet18 of width 8 on cifar10, lenet5 elsewhere)")
    p.add_argument("--width", type=int)
    p.add_argument("--surrogate", help="surrogate of em/rem/tap (default: the victim's architecture)")
    p.add_argument("--recipe", choices=list_recipes(), help="default: paper on cifar10/100, quick elsewhere")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--budget", default="standard", choices=list_budgets())
    p.add_argument("--train-limit", type=int)
    p.add_argument("--methods", help="comma-separated labels, e.g. em,ops (clean is always run)")
    p.add_argument("--device", default="cpu", help="where poisons are made and models trained (cpu, cuda, mps)")
    p.add_argument("--runs-dir", default="benchmarks/runs/poison_effect", help="run files (reused when complete)")
    p.add_argument("--out", help="also write the table as markdown here")
    p.add_argument("--ud", action="store_true",
                   help="then exact SAL of every run (post hoc, at --sal-epochs on --sal-subset samples) and UD")
    p.add_argument("--sal-epochs", default="10,20,30,40", help="epochs to measure SAL at")
    p.add_argument("--sal-subset", type=int, default=512, help="first N (protected) training samples for SAL")
    args = p.parse_args()
    if args.dataset == "cifar10" and not args.data_dir and natural:
        args.data_dir = str(CIFAR)
    model = args.model or ("resnet18" if args.dataset.startswith("cifar") else "lenet5")
    width = args.width if args.width is not None else (8 if model == "resnet18" and args.model is None else None)
    data_cfg = DataConfig(args.dataset, args.data_dir, train_limit=args.train_limit)
    dataset = load_dataset(data_cfg)
    recipe = args.recipe or default_recipe(args.dataset)
    tcfg = apply_recipe(TrainConfig(epochs=args.epochs, seed=0, device=args.device), recipe, args.dataset)
    base = RunConfig(name="clean", data=data_cfg, model=ModelConfig(model, width), train=tcfg)
    surrogate = {"surrogate": args.surrogate or model, "surrogate_width": width if args.surrogate is None else None}
    wanted = set(args.methods.split(",")) if args.methods else None
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, method, params in METHODS:
        if wanted and label not in wanted and label != "clean":
            continue
        if method in ("em", "rem", "tap"):
            params = {**params, **surrogate, **(CPU_SETTINGS.get(label, {}) if args.device == "cpu" else {})}
        poison = PoisonConfig(method, params=params, budget=args.budget)
        config = replace(base, name=label, poison=poison)
        start = time.perf_counter()
        protected = make_poison(poison, dataset, device=args.device, progress=True)
        gen = time.perf_counter() - start
        gen_text = "cached" if "cached" in protected.info else f"{gen:.1f}s"
        path = runs_dir / f"{label.replace('/', '-')}.h5"
        history = _reuse(path, config)
        if history is None:
            # the clean dataset: train() protects it with config.poison (the cached poison made above);
            # passing the protected one made it protect the images a second time
            history = train(config, path, overwrite=True, dataset=dataset, progress=True).history
        last = history[-1]
        tail = [r["test_acc"] for r in history[-5:]]
        facts = {k: v for k, v in protected.info.items() if k in ("rounds", "surrogate_train_error", "targeted_success")}
        rows.append({"method": label, "test_acc": last["test_acc"], "test_acc_last5": sum(tail) / len(tail),
                     "train_acc_protected": last["train_acc"], "generation": gen_text,
                     "facts": ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in facts.items())})
        print(f"{label:12s} test_acc {last['test_acc']:.4f} (last 5: {rows[-1]['test_acc_last5']:.4f})  "
              f"generation {gen_text}  {rows[-1]['facts']}", flush=True)
    table = pd.DataFrame(rows)
    clean = table.loc[table["method"] == "clean", "test_acc_last5"].iloc[0]
    table.insert(3, "ratio_to_clean", table["test_acc_last5"] / clean)
    table["target"] = [" ".join(map(str, TARGETS[m])) if m in TARGETS else "" for m in table["method"]]
    table["met"] = [("yes" if (r <= TARGETS[m][1] if TARGETS[m][0] == "<=" else r >= TARGETS[m][1]) else "NO")
                    if m in TARGETS else "" for m, r in zip(table["method"], table["ratio_to_clean"])]
    title = (f"{model}{f' (width {width})' if width else ''} on {args.dataset} ({len(dataset.x_train)} train / "
             f"{len(dataset.x_test)} test), recipe {recipe} (batch {tcfg.batch_size}, augment {tcfg.augment}), "
             f"{args.epochs} epochs, seed 0, budget {args.budget}, device {args.device}")
    print(f"\n== {title} ==")
    print("ratio_to_clean uses the mean test accuracy of the last 5 epochs")
    if args.device == "cpu":
        print(f"CPU settings of the surrogate methods: {CPU_SETTINGS}; surrogate {surrogate}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ud_text = ""
    if args.ud:
        ud_text = _ud_phase(runs_dir, [r["method"] for r in rows], args)
    if args.out:
        Path(args.out).write_text(f"# {title}\n\n`python {' '.join(sys.argv)}`\n\n"
                                  f"CPU settings: {CPU_SETTINGS}; surrogate {surrogate}\n\n"
                                  + "```\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3f}") + "\n```\n"
                                  + ud_text)


def _ud_phase(runs_dir: Path, labels: list[str], args) -> str:
    """Exact SAL of every run at a few epochs on a fixed subset, then UD against the clean run and
    each layer's learnable fraction; returns the text printed."""
    from ulviz import SALConfig
    from ulviz.sal import compute_run_sal
    from ulviz.ud import ud_table

    sal = SALConfig(estimator="exact", subset=args.sal_subset)
    epochs = [int(e) for e in args.sal_epochs.split(",")]
    paths = [runs_dir / f"{label.replace('/', '-')}.h5" for label in labels]
    for path in paths:
        start = time.perf_counter()
        compute_run_sal(path, sal, device=args.device, epochs=epochs)
        print(f"SAL {path.name}: {time.perf_counter() - start:.0f}s", flush=True)
    table, result = ud_table(paths[0], paths[1:])
    layers = open_run(paths[0]).layer_names
    per_layer = pd.DataFrame({name: frac for name, frac in result.per_layer.items()}, index=layers).T
    text = (f"\nSAL: exact (10 rounds, lr 0.1, eps 0.05), post hoc at epochs {epochs} on the first "
            f"{args.sal_subset} samples of each run's (protected) training set\n"
            f"threshold {result.threshold:.6f}; clean learnable layers per epoch {result.clean_count:.3f}\n\n"
            + table.to_string(index=False, float_format=lambda v: f"{v:.3f}")
            + "\n\nlearnable fraction of epochs per layer:\n"
            + per_layer.to_string(float_format=lambda v: f"{v:.2f}") + "\n")
    print(text)
    return "\n```\n" + text + "```\n"


def _reuse(path: Path, config: RunConfig):
    """The history of a complete run file with this very config, else None."""
    if not path.exists():
        return None
    try:
        run = open_run(path)
    except Exception:
        return None
    if run.status != "complete" or run.config.to_dict() != config.to_dict():
        return None
    return run.metrics.to_dict("records")


if __name__ == "__main__":
    main()
