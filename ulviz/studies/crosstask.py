"""Cross-task unlearnability: do protected images still teach other tasks?

The paper opens with it: unlearnable examples made against classification still let a network
learn other tasks on the same images, so they are not truly unlearnable. A study is a grid of
runs, method x task, all trained on the same (possibly protected) images and scored on clean test
images. Per run it reports the task's metric, its ratio to the clean run of the same task, the
linear-probe accuracy (:mod:`ulviz.measure.probe`: class information in the features, whatever the task)
and the UD against the clean run of the same task (SAL with the task's own loss).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from ..core.accuracy import LAST_K, accuracy_summary
from ..core.config import PoisonConfig, RunConfig
from ..core.errors import UlvizError


def grid_configs(base: RunConfig, methods: dict[str, PoisonConfig], tasks: Iterable[str]) -> dict[str, RunConfig]:
    """File stem -> config of every (task, method) run; the clean run of each task is always in."""
    methods = {"clean": PoisonConfig("clean"), **methods}
    return {f"{task}-{label}": replace(base, name=label, poison=poison, train=replace(base.train, task=task))
            for task in tasks for label, poison in methods.items()}


def run_grid(configs: dict[str, RunConfig], runs_dir: str | Path, sal=None, sal_epochs: list[int] | None = None,
             say: Callable[[str], None] = print) -> list[Path]:
    """Train every config not already complete in `runs_dir`, then its SAL (post hoc, `sal` at
    `sal_epochs`) when asked; returns the run files."""
    from ..measure.sal_runs import compute_run_sal
    from ..training.loop import train
    from ..training.verify import reusable_run

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, config in configs.items():
        path = runs_dir / f"{stem}.h5"
        if reusable_run(path, config):
            say(f"{stem}: reused {path}")
        else:
            say(f"{stem}: training")
            train(config, path, overwrite=True)
        if sal is not None:
            compute_run_sal(path, sal, epochs=sal_epochs)
        paths.append(path)
    return paths


def task_score(run) -> tuple[str, float]:
    """(metric name, value) of a run on clean test data: accuracy averaged over its last epochs,
    or for segment the foreground IoU of its final weights."""
    from ..data.tasks import get_task
    task = get_task(run.config.train.task)
    if task.metric == "IoU":
        return "IoU", final_iou(run)
    return "accuracy", accuracy_summary(run.metrics, LAST_K).last_k


def final_iou(run) -> float:
    """Foreground IoU of the run's final weights on its clean test set."""
    import torch

    from ..measure.landscape.runs import run_data, run_model
    from ..data.tasks import iou
    model = run_model(run)
    x, y = run_data(run, "test")
    with torch.no_grad():
        return iou(torch.cat([model(x[i:i + 512]) for i in range(0, len(x), 512)]), y)


def crosstask_table(paths: Iterable[str | Path], probe: bool = True) -> pd.DataFrame:
    """One row per run: method, task, metric, score, ratio to its clean twin (the clean run of the
    same task trained the same way: data, model and width, recipe, seed, defenses;
    :func:`ulviz.measure.seeds.clean_twin_key`), probe accuracy and UD against that twin (NaN where the run
    or its twin has no SAL, or where it has no twin among `paths`)."""
    from ..measure.probe import linear_probe
    from ..store.runs import open_run, run_labels
    from ..measure.seeds import clean_twin_key
    from ..measure.ud import group_ud

    runs = [open_run(p) for p in paths]
    rows = []
    for label, run in zip(run_labels(runs), runs):
        metric, score = task_score(run)
        rows.append({"run": label, "method": run.config.poison.method, "label": run.name,
                     "task": run.config.train.task, "metric": metric,
                     "_reference": clean_twin_key(run.config),
                     "score": score, "probe": linear_probe(run.path).test_acc if probe else np.nan, "_run": run})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["ratio"], table["UD"] = np.nan, np.nan
    for _, group in table.groupby("_reference"):
        clean, result, _ = group_ud({i: table.at[i, "_run"] for i in group.index})
        if clean is None:
            continue
        table.loc[group.index, "ratio"] = group["score"] / table.at[clean, "score"]
        for i, ud in (result.ud.items() if result is not None else ()):
            table.at[i, "UD"] = ud
    return table[["run", "label", "method", "task", "metric", "score", "ratio", "probe", "UD"]]
