"""Does SAL point at the layers that matter? Layer-transplant study on the bundled demo.

For each protected run (default em-class, lsp, ops, tap) and its clean twin (same seed, same
initial weights), at one epoch (default the last), the protected model gets the clean run's
weights (and batch-norms) for:

- the SAL-learnable half: the n//2 layers with the highest mean SAL in the protected run
  (``sal-top``), i.e. the layers SAL calls still learnable under the protection;
- the SAL-unlearnable half: the n//2 layers with the lowest mean SAL (``sal-bottom``);
- the n//2 layers whose SAL differs most from the clean run's (``sal-diff``);
- --draws random halves of n//2 layers (seeds 0..draws-1): mean, min and max;
- one block at a time (stem, each stage, head).

Reported: clean-test accuracy and the fraction of the clean-minus-protected gap restored, with the
fraction of the weights each selection holds (a half can be most of the parameters). Only reads
the run files; nothing is trained, so it takes seconds per evaluation on a CPU.

    .venv/bin/python benchmarks/layer_surgery.py --out benchmarks/results/layer-surgery-cifar10-cpu.md
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ulviz import open_run  # noqa: E402
from ulviz.measure.surgery import Patient, blocks, random_layers, resolve_epoch, select_layers, transplant  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", default=str(ROOT / "data" / "demo"), help="directory with clean.h5 and the protected runs")
    p.add_argument("--methods", default="em-class,lsp,ops,tap")
    p.add_argument("--epoch", type=int, default=-1, help="-1 = the last")
    p.add_argument("--draws", type=int, default=10, help="random halves per method")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the results as markdown here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    demo = Path(args.demo)
    clean = open_run(demo / "clean.h5")
    halves, per_block = [], []
    for method in args.methods.split(","):
        prot = open_run(demo / f"{method}.h5")
        epoch = resolve_epoch(args.epoch, prot, clean)
        patient = Patient(prot, "cpu")
        sizes = {n: int(np.prod(prot.shapes[n])) for n in prot.layer_names}
        k = len(prot.layer_names) // 2

        def row(kind, layers):
            r = transplant(prot, clean, layers, epoch, patient=patient)
            return {"method": method, "selection": kind, "layers": len(layers),
                    "weights": sum(sizes[n] for n in layers) / sum(sizes.values()), "accuracy": r.accuracy,
                    "restored": r.restored, "protected": r.protected_accuracy, "clean": r.clean_accuracy}
        for rule in ("sal-top", "sal-bottom", "sal-diff"):
            halves.append(row(rule, select_layers(f"{rule}:{k}", prot, clean)))
        draws = pd.DataFrame([row("random", random_layers(prot.layer_names, k, s)) for s in range(args.draws)])
        halves.append({**draws.iloc[0].to_dict(), "selection": f"random x{args.draws}",
                       "weights": draws.weights.mean(), "accuracy": draws.accuracy.mean(),
                       "restored": draws.restored.mean(),
                       "range": f"{draws.accuracy.min():.3f}-{draws.accuracy.max():.3f}"})
        for block, layers in blocks(prot.layer_names).items():
            per_block.append(row(block, layers))
        print(f"{method}: done at {time.perf_counter() - start:.0f} s", flush=True)
    halves, per_block = pd.DataFrame(halves), pd.DataFrame(per_block)
    seconds = time.perf_counter() - start
    print(halves.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(per_block.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        write(Path(args.out), args, halves, per_block, seconds, clean)


def write(path: Path, args, halves, per_block, seconds, clean) -> None:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    cols = ["method", "selection", "layers", "weights", "accuracy", "restored", "range"]
    text = [
        "# Layer surgery on the demo: transplanting SAL-chosen halves and single blocks",
        "",
        f"Command: `python benchmarks/layer_surgery.py --methods {args.methods} --draws {args.draws} "
        f"--epoch {args.epoch} --threads {args.threads} --out {path}`  ",
        f"Code revision {rev}; date 2026-12-04 (run {date.today()}); {seconds:.0f} s on {args.threads} CPU threads "
        "(a machine shared with other jobs). Random halves: seeds 0.."
        f"{args.draws - 1} (`random.Random(seed).sample`). Runs: `data/demo` ({clean.config.model.name} width "
        f"{clean.config.model.width}, CIFAR-10 subset, {clean.epochs_done} epochs, seed {clean.config.train.seed}); "
        f"SAL: {clean.sal_settings.get('estimator')} at epochs {', '.join(map(str, clean.sal_epochs))} on "
        f"{clean.sal_settings.get('subset')} training images. Nothing is trained; the transplant is evaluated on "
        "the clean test set as training logs test_acc.",
        "",
        "`weights`: fraction of the Conv/Linear weights in the selection. `restored`: (accuracy - protected) / "
        "(clean - protected), the share of the accuracy gap the transplant closes. A half is n//2 layers.",
        "",
        "## Halves",
        "",
        markdown(halves.reindex(columns=cols).fillna("")),
        "",
        "## One block at a time",
        "",
        markdown(per_block.reindex(columns=cols[:-1])),
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    print(f"wrote {path}")


def markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a markdown table, floats to 3 decimals (no tabulate needed)."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
