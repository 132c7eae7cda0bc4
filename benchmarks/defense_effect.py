"""Defense study on the demo's CIFAR-10 setting: protection x defense, accuracy and UD.

Every run is the demo's (resnet18 of width 4 on the bundled CIFAR-10 subset, paper recipe, 16
epochs, seed 0, the demo's protections) with the trainer's defense added; the undefended runs are
the demo's own files, copied. Each gets exact SAL on its first 64 (protected, defended) training
images at epochs 4, 8, 12 and 16, and UD is taken against the clean run trained under the same
defense. Runs already complete in --runs-dir are reused, so an interrupted study resumes.
Prints the accuracy table (ratio to clean under the same defense) and the UD table; --out writes
them as markdown, --summary keeps the study's tables for the dashboard's Defenses page.

    .venv/bin/python benchmarks/defense_effect.py [--methods em,tap,lsp,ops] [--defenses none,jpeg,...]
        [--out benchmarks/results/defense-effect-cifar10-cpu.md] [--summary data/studies/defenses-cifar10.h5]

Adversarial training runs at the CPU setting ``at:steps=2,alpha=4/255`` (eps 8/255): the default
10 steps cost about 8x a training epoch here.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ulviz.core.config import SALConfig
from ulviz.protect.defenses import parse_defense
from ulviz.studies.crosstask import run_grid
from ulviz.studies.defense_study import NONE, defense_study, save_study, study_configs, study_text
from ulviz.studies.demo import DEMO_DIR, demo_study

ROOT = Path(__file__).resolve().parents[1]
DEFENSES = {  # label -> spec, in the order of the table's columns
    NONE: [],
    "jpeg": ["jpeg"],
    "grayscale": ["grayscale"],
    "iss": ["iss"],
    "ueraser": ["ueraser"],
    "cutout": ["cutout"],
    "mixup": ["mixup"],
    "cutmix": ["cutmix"],
    "at": [f"at:eps={8 / 255},steps=2,alpha={4 / 255}"],
}
SAL = SALConfig(estimator="exact", subset=64)
SAL_EPOCHS = [4, 8, 12, 16]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="em,tap,lsp,ops", help="labels of the demo's protections")
    p.add_argument("--defenses", default=",".join(DEFENSES), help=f"labels among {', '.join(DEFENSES)}")
    p.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "runs" / "defense"))
    p.add_argument("--out", help="also write the tables as markdown here")
    p.add_argument("--summary", help="also keep the study's tables here (the dashboard's Defenses page reads them)")
    args = p.parse_args()
    study = demo_study("cifar10")
    methods = {m: study.methods[m] for m in args.methods.split(",") if m != "clean"}
    defenses = {d: [parse_defense(s) for s in DEFENSES[d]] for d in args.defenses.split(",")}
    configs = study_configs(study.base, methods, defenses)
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    if NONE in defenses:  # the demo's runs are the undefended column: same config, reused
        for label in ["clean", *methods]:
            src, dst = DEMO_DIR / f"{label}.h5", runs_dir / f"{NONE}-{label}.h5"
            if src.exists() and not dst.exists():
                shutil.copy(src, dst)
    start = time.perf_counter()
    paths = run_grid(configs, runs_dir, SAL, SAL_EPOCHS, say=lambda t: print(f"[{time.perf_counter() - start:6.0f} s] {t}", flush=True))
    result = defense_study(paths)
    text = study_text(result)
    print(text)
    for note in result.notes:
        print("note:", note)
    minutes = (time.perf_counter() - start) / 60
    print(f"{minutes:.1f} min")
    how = (f"resnet18 (width 4) on the CIFAR-10 subset (5085 / 1017 images), the demo's recipe, 16 epochs, seed 0 "
           f"and protections; accuracy = clean-test accuracy, mean of the last 4 epochs; ratio and UD against the "
           f"clean run trained under the same defense; exact SAL on the first 64 training images (as trained on: "
           f"protected, then defended) at epochs {SAL_EPOCHS}; at = PGD adversarial training at the CPU setting "
           f"eps 8/255, 2 steps of 4/255.")
    if args.out:
        Path(args.out).write_text(f"# Defense study: protection x defense on the CIFAR-10 subset (CPU)\n\n"
                                  f"`python {' '.join(sys.argv)}`\n\n{how}\n\n```\n{text}\n```\n"
                                  + "".join(f"\n- {n}" for n in result.notes) + "\n")
    if args.summary:
        save_study(result, args.summary, how)


if __name__ == "__main__":
    main()
