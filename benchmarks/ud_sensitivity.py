"""How much UD moves with the choices made in measuring it.

For run files of one clean run and protected runs of the same seed (by default the seed-0 runs of
benchmarks/poison_effect.py), exact SAL is computed post hoc (in memory, never written into the
run files) on the images each run trained on, under each variant of one choice at a time, the
others held at the reference (--reference-subset images, 512 unless given; eps 0.05, the SAL epochs given, the 2-means midpoint):

- the SAL sample count: --subsets (128 / 512 / 1024 / all images unless given);
- the radius eps: 0.025 / 0.05 / 0.1;
- the epochs: every one given / the last half / the last one;
- the threshold rule: the exact 2-means midpoint; scikit-learn's KMeans(n_clusters=2) with a
  random start, as the original calls it (the range over 10 draws); the clean SAL's median and
  75th percentile.

    .venv/bin/python benchmarks/ud_sensitivity.py benchmarks/runs/poison_effect/*_seed-0.h5 --epochs 5,10,...,40

SAL matrices are cached beside the runs (`<runs dir>/sensitivity/*.npy`, keyed by the run file's
creation stamp and the setting), so a rerun only adds what is missing.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE = dict(subset=512, eps=0.05)
RADII = (0.025, 0.05, 0.1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run files: one clean run and protected runs of the same seed")
    p.add_argument("--epochs", required=True, help="epochs to measure SAL at, e.g. 5,10,15,20")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="run files measured at once (processes)")
    p.add_argument("--reference-subset", default=str(REFERENCE["subset"]),
                   help="the reference setting's SAL sample count ('all': every image; the other columns vary "
                        "one choice from it)")
    p.add_argument("--subsets", default="128,512,1024,all",
                   help="SAL sample counts to vary over ('all': every image the run trained on)")
    p.add_argument("--out", help="also write the report (markdown) here")
    args = p.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    if not (args.reference_subset == "all" or (args.reference_subset.isdigit() and int(args.reference_subset) > 0)):
        p.error(f"--reference-subset takes a positive count or 'all', not {args.reference_subset!r}")
    REFERENCE["subset"] = None if args.reference_subset == "all" else int(args.reference_subset)
    if not all(v == "all" or (v.isdigit() and int(v) > 0) for v in args.subsets.split(",")):
        p.error(f"--subsets takes positive counts or 'all', comma-separated, not {args.subsets!r}")
    args.subsets = [None if v == "all" else int(v) for v in args.subsets.split(",")]
    if REFERENCE["subset"] not in args.subsets:
        args.subsets.append(REFERENCE["subset"])
    settings = [dict(REFERENCE, subset=s) for s in args.subsets] + [dict(REFERENCE, eps=e) for e in RADII if e != 0.05]
    jobs = [(path, s, epochs, args.device) for path in args.runs for s in settings]
    start = time.perf_counter()
    if args.workers > 1:
        import multiprocessing
        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_star, jobs))
    else:
        results = [_star(job) for job in jobs]
    sal = {(path, _label(s)): m for (path, s, _, _), m in zip(jobs, results)}
    report = _report(args, epochs, sal, time.perf_counter() - start)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


def _label(setting: dict) -> str:
    return f"n={setting['subset'] or 'all'}, eps={setting['eps']}"


def _star(job):
    return sal_matrix(*job)


def sal_matrix(path: str, setting: dict, epochs: list[int], device: str) -> np.ndarray:
    """(epochs x layers) exact SAL of a run file under `setting`, from the cache when there."""
    from ulviz import open_run
    from ulviz.data.datasets import load_dataset
    from ulviz.measure.sal import layer_sal, sal_arrays
    from ulviz.measure.sal_runs import sal_data
    from ulviz.models.registry import build_model, weight_layer_names
    from ulviz.protect.trainset import run_training_data

    run = open_run(path)
    stored = _stored_sal(run, setting, epochs)
    if stored is not None:  # the run's own SAL was measured with exactly this setting
        return stored
    key = hashlib.sha256(f"{run.created}|{sorted(setting.items())}|{epochs}".encode()).hexdigest()[:12]
    cache = Path(path).parent / "sensitivity" / f"{Path(path).stem}-{key}.npy"
    if cache.exists():
        return np.load(cache)
    data = run_training_data(run, load_dataset(run.config.data), protected=True)  # what it trained on
    x, y = sal_data(data, "train")
    model = build_model(run.config, data)
    rows = []
    for epoch in epochs:
        model.load_state_dict(run.snapshot(epoch))
        records = layer_sal(model, (x, y), estimator="exact", eps=setting["eps"], subset=setting["subset"],
                            device=device)
        rows.append(sal_arrays(records, weight_layer_names(model))["sal"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, np.array(rows))
    print(f"{Path(path).stem} {_label(setting)} done", flush=True)
    return np.array(rows)


def _stored_sal(run, setting: dict, epochs: list[int]) -> np.ndarray | None:
    """(epochs x layers) SAL from the run file when it was computed with `setting` and this script's
    fixed choices (exact, 10 rounds, lr 0.1, the first images of the train split) at every epoch."""
    s = run.sal_settings or {}
    same = (s.get("estimator") == "exact" and s.get("iters") == 10 and s.get("lr_min") == s.get("lr_max") == 0.1
            and s.get("split") == "train" and not s.get("shuffle") and s.get("eps") == setting["eps"]
            and s.get("subset") == setting["subset"])
    where = {int(e): i for i, e in enumerate(run.sal_epochs)}
    if not same or not all(e in where for e in epochs):
        return None
    return np.asarray(run.sal["sal"])[[where[e] for e in epochs]]


def _report(args, epochs, sal, seconds) -> str:
    from ulviz import open_run
    from ulviz.measure.ud import ud_variants, unlearnable_distance

    runs = {path: open_run(path) for path in args.runs}
    clean = next(p for p, r in runs.items() if r.config.poison.method == "clean")
    others = [p for p in args.runs if p != clean]
    names = {p: runs[p].name for p in args.runs}
    ref = _label(REFERENCE)
    cols = {}

    def ud(label):
        return {names[p]: unlearnable_distance(sal[(clean, label)], {"r": sal[(p, label)]}).ud["r"] for p in others}

    for s in args.subsets:
        cols[f"n={s or 'all'}"] = ud(_label(dict(REFERENCE, subset=s)))
    for e in RADII:
        cols[f"eps={e}"] = ud(_label(dict(REFERENCE, eps=e)))
    # the threshold rules and the epochs counted, on the reference setting's SAL (as the UD page does)
    variants = ud_variants(sal[(clean, ref)], {names[p]: sal[(p, ref)] for p in others}, epochs)
    cols.update(variants.drop(columns="midpoint (reference)").to_dict())
    table = pd.DataFrame(cols)
    from ulviz.core.provenance import code_revision
    rev = (code_revision()[0] or "unknown")[:12]
    first = runs[clean].config
    sample = "all the" if REFERENCE["subset"] is None else f"the first {REFERENCE['subset']}"
    return (f"# UD sensitivity: {first.model.name} (width {first.model.width}) on {first.data.name}, seed "
            f"{first.train.seed}\n\n- command: `python {' '.join(sys.argv)}`\n- code revision: {rev}; date: "
            f"{date.today().isoformat()}; device: {args.device}; {seconds:.0f} s\n"
            f"- reference setting: exact SAL (10 rounds, lr 0.1) on {sample} images each run trained on, eps "
            f"0.05, at epochs {epochs}, threshold the clean run's 2-means midpoint; each column changes one choice\n"
            f"- UD of each protected run against the clean run of the same seed\n\n```\n"
            + table.to_string(float_format=lambda v: f"{v:.2f}") + "\n```\n")


if __name__ == "__main__":
    main()
