"""Runs side by side as a researcher compares them: one row per run with every config field
flattened (``poison.method``, ``model.width``, ``poison.params.eps``, ``train.seed`` ...), its
accuracy three ways and its UD against its clean twin; then filter on any field, group by any
fields, and per group the mean with a 95% t interval, of scalar results and of whole curves.

This generalises the seed grouping of :mod:`ulviz.measure.ud` (there: group by "everything but the
seed"; here: by the fields the user names) and uses the same interval (:func:`ulviz.measure.seeds.mean_interval`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import UlvizError
from .seeds import SUMMARY_METRICS, mean_interval, seed_table

RESULTS = SUMMARY_METRICS  # acc_final, acc_last, acc_peak, ratio_*, UD: what a group summary averages
# fields that name or place a run rather than shape its training: never a grouping axis by default
_NOT_AXES = ("name", "data.data_dir", "train.device")


def flat_config(config) -> dict[str, object]:
    """A run config as one level of dotted keys (``poison.params.eps``); lists and other
    non-scalars become their JSON text, so every value can be compared and grouped on."""
    out: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            out[prefix] = json.dumps(value, sort_keys=True) if value else "-"
        else:
            out[prefix] = "-" if value is None else value
    walk("", json.loads(config.to_json()))
    return out


def runs_frame(runs: dict) -> pd.DataFrame:
    """One row per run (label -> Run): ``run`` (its label), ``path``, every config field flattened,
    epochs done, and the results of :func:`ulviz.measure.seeds.seed_table` (accuracy three ways, the ratio to
    its clean twin, UD against that twin)."""
    if not runs:
        return pd.DataFrame(columns=["run", "path"])
    results = seed_table([r.path for r in runs.values()])
    by_path = {str(Path(p).resolve()): row for p, row in zip(results["path"], results.to_dict("records"))}
    rows = []
    for label, run in runs.items():
        res = by_path.get(str(Path(run.path).resolve()), {})
        rows.append({"run": label, "path": str(run.path), **flat_config(run.config), "epochs_done": run.epochs_done,
                     **{m: res.get(m, np.nan) for m in RESULTS}})
    frame = pd.DataFrame(rows)
    # a field only some runs have (a method's own parameter) reads "-" for the others, as None does
    fields = config_fields(frame)
    frame[fields] = frame[fields].astype(object).where(frame[fields].notna(), "-")
    return frame


def config_fields(frame: pd.DataFrame) -> list[str]:
    """The flattened config columns of a :func:`runs_frame`, in config order."""
    skip = {"run", "path", "epochs_done", *RESULTS}
    return [c for c in frame.columns if c not in skip]


def varying_fields(frame: pd.DataFrame) -> list[str]:
    """The config fields that take more than one value among the rows (a sweep's axes), less those
    that only name or place a run."""
    return [c for c in config_fields(frame)
            if c not in _NOT_AXES and frame[c].astype(str).nunique(dropna=False) > 1]


def main_axes(frame: pd.DataFrame) -> list[str]:
    """The varying fields worth grouping by at first: not the seed (groups average over seeds),
    and not a method's own parameters while the method itself varies (they follow from it)."""
    axes = [f for f in varying_fields(frame) if f != "train.seed"]
    if "poison.method" in axes:
        axes = [f for f in axes if not f.startswith("poison.params.")]
    return axes


def filter_runs(frame: pd.DataFrame, keep: dict[str, list]) -> pd.DataFrame:
    """The rows whose value of each field in `keep` is one of its listed values (compared as text,
    so 0.03 typed in a box and 0.03 stored match); an empty list keeps nothing of that field."""
    mask = pd.Series(True, index=frame.index)
    for field, values in keep.items():
        if field not in frame.columns:
            raise UlvizError(f"no config field {field!r}; fields: {', '.join(config_fields(frame))}")
        mask &= frame[field].astype(str).isin([str(v) for v in values])
    return frame[mask]


def group_label(frame: pd.DataFrame, by: list[str]) -> pd.Series:
    """Each row's group as text, ``field=value`` joined by ", " (the run's label when `by` is empty:
    every run its own group)."""
    if not by:
        return frame["run"].astype(str)
    return frame[by].astype(str).apply(lambda row: ", ".join(f"{f.split('.')[-1]}={v}" for f, v in row.items()),
                                       axis=1)


def group_summary(frame: pd.DataFrame, by: list[str], metrics=RESULTS, level: float = 0.95) -> pd.DataFrame:
    """Per group of rows sharing the values of the fields `by`: ``group`` (as text), those fields,
    ``n`` (rows), and for each of `metrics` its mean with a `level` Student-t interval
    (``<m>_mean``, ``<m>_lo``, ``<m>_hi``; NaNs left out, lo = hi = mean for one value)."""
    for f in by:
        if f not in frame.columns:
            raise UlvizError(f"no config field {f!r} to group by")
    labels = group_label(frame, by)
    rows = []
    for label in dict.fromkeys(labels):  # groups in the order their first run appears
        group = frame[labels == label]
        row = {"group": label, **{f: group[f].iloc[0] for f in by}, "n": len(group)}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = mean_interval(group[m], level)
        rows.append(row)
    return pd.DataFrame(rows)


def curve_band(curves: list[pd.DataFrame], column: str = "test_acc", level: float = 0.95) -> pd.DataFrame:
    """Mean and `level` t interval over runs of one metrics column, epoch by epoch (runs of other
    lengths count where they have the epoch): epoch, n, mean, lo, hi."""
    table = pd.concat([c.set_index("epoch")[column].rename(i) for i, c in enumerate(curves)], axis=1)
    rows = [{"epoch": int(e), "n": int(values.notna().sum()), **dict(zip(("mean", "lo", "hi"),
                                                                         mean_interval(values, level)))}
            for e, values in table.iterrows()]
    return pd.DataFrame(rows, columns=["epoch", "n", "mean", "lo", "hi"])


def group_curves(frame: pd.DataFrame, runs: dict, by: list[str], column: str = "test_acc") -> dict[str, pd.DataFrame]:
    """Group label -> :func:`curve_band` of `column` over the group's runs (label -> Run)."""
    labels = group_label(frame, by)
    return {label: curve_band([runs[r].metrics for r in frame.loc[labels == label, "run"]], column)
            for label in dict.fromkeys(labels)}


def comparability_key(config) -> tuple:
    """What must match for two runs' numbers to share a scale: dataset, model, its width, task."""
    return (config.data.name, config.model.name, config.model.width, config.train.task)


def _describe(key: tuple) -> str:
    dataset, model, width, task = key
    return f"{dataset} / {model}" + (f" width {width}" if width else "") + ("" if task == "classify" else f" / {task}")


def comparable(runs: dict, reference: str) -> tuple[list[str], dict[str, str]]:
    """(labels of the runs comparable with run `reference`, label -> why for the others), among
    `runs` (label -> Run): comparable = same :func:`comparability_key`."""
    ref = comparability_key(runs[reference].config)
    keep, left = [], {}
    for label, run in runs.items():
        key = comparability_key(run.config)
        if key == ref:
            keep.append(label)
        else:
            left[label] = f"{_describe(key)}, not {_describe(ref)}"
    return keep, left
