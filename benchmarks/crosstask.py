"""Cross-task study on the demo's CIFAR-10 setting: classify vs rotation, per protection.

The classification runs are the bundled demo's (data/demo, reused as they are: same config);
the rotation runs are trained here with the same network, recipe, seed and protected images, and
get exact SAL at the demo's epochs on the same 128 samples, so UD compares each rotation run with
the clean rotation run. Prints the table (score on clean test data, ratio to the clean run of the
same task, linear probe, UD).

    .venv/bin/python benchmarks/crosstask.py [--methods lsp,ops,em-class,em,tap] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ulviz.studies.crosstask import crosstask_table, grid_configs, run_grid
from ulviz.studies.demo import DEMO_DIR, demo_study

ROOT = Path(__file__).resolve().parents[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="lsp,ops,em-class,em,tap", help="labels of the demo's protections")
    p.add_argument("--tasks", default="classify,rotation")
    p.add_argument("--runs-dir", default=str(ROOT / "benchmarks" / "runs" / "crosstask"))
    p.add_argument("--out", help="also write the table as markdown here")
    args = p.parse_args()
    study = demo_study("cifar10")
    methods = {m: study.methods[m] for m in args.methods.split(",") if m != "clean"}
    configs = grid_configs(study.base, methods, args.tasks.split(","))
    runs_dir = Path(args.runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for label in ["clean", *methods]:  # the demo's classification runs, reused
        if (DEMO_DIR / f"{label}.h5").exists() and not (runs_dir / f"classify-{label}.h5").exists():
            shutil.copy(DEMO_DIR / f"{label}.h5", runs_dir / f"classify-{label}.h5")
    start = time.perf_counter()
    sal_epochs = study.sal_epochs(study.base.train.epochs)
    paths = run_grid(configs, runs_dir, study.sal, sal_epochs, say=lambda t: print(t, flush=True))
    table = crosstask_table(paths)
    text = table.drop(columns=["run"]).to_string(index=False, float_format=lambda v: f"{v:.3f}")
    print(text)
    print(f"{(time.perf_counter() - start) / 60:.1f} min")
    if args.out:
        Path(args.out).write_text(
            f"# Cross-task study: resnet18 (width 4) on the CIFAR-10 subset, the demo's recipe and protections\n\n"
            f"`python {' '.join(sys.argv)}`\n\nscore = clean-test accuracy, mean of the last 4 epochs (rotation: all "
            f"four rotations of every test image); ratio = to the clean run of the same task; probe = linear probe "
            f"on the clean images' classes; UD against the clean run of the same task (exact SAL on 128 samples "
            f"at epochs {sal_epochs}).\n\n```\n{text}\n```\n")


if __name__ == "__main__":
    main()
