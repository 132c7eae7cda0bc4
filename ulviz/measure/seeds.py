"""Runs over several seeds: each run paired with its clean twin (the clean run of the same config and
seed), a table of accuracies, ratios and UD per run, and per variant the mean over seeds with a
Student's t interval.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.accuracy import LAST_K, accuracy_columns
from ..core.errors import UlvizError
from .ud import group_ud

if TYPE_CHECKING:  # pandas is imported where a table is built
    import pandas as pd


# -- several seeds ------------------------------------------------------------------------------

_SEED_TOKEN = re.compile(r"([_-]?seed[-_=]?\d+|[_-]s\d+$)", re.IGNORECASE)


def _variant_key(config):
    """A run's config without its name and seed: runs that differ only in the seed share it."""
    from dataclasses import replace
    return replace(config, name="", train=replace(config.train, seed=0)).to_json()


def clean_twin_key(config) -> str:
    """The config of the clean run a protected run is compared with, as a key: the same in
    everything that shapes training (data, model and width, recipe, seed, defenses, task) but its
    protection. Left out as well: the name, and what does not change the weights (the SAL measured
    during training, the device string, "auto" or "cuda"). Every table pairs runs by this rule,
    never by name or layer list: two clean runs of other widths in one directory are not twins."""
    from dataclasses import replace

    from ..core.config import PoisonConfig, SALConfig
    return replace(config, name="", poison=PoisonConfig("clean"), sal=SALConfig(),
                   train=replace(config.train, device="")).to_json()


def clean_twins(runs: dict) -> dict:
    """Key -> the key of its clean twin among `runs` (key -> Run), for every run that has one
    (a clean run is its own twin; of several identical clean runs the first is the twin)."""
    first = {}
    for k, r in runs.items():
        if r.config.poison.method == "clean":
            first.setdefault(clean_twin_key(r.config), k)
    return {k: first[t] for k, r in runs.items() if (t := clean_twin_key(r.config)) in first}


ACCURACIES = ("final", "last", "peak")  # the three readings of a run's accuracy (ulviz.core.accuracy)
SUMMARY_METRICS = tuple(f"acc_{a}" for a in ACCURACIES) + tuple(f"ratio_{a}" for a in ACCURACIES) + ("UD",)


def seed_table(paths, variants: dict | None = None, k: int = LAST_K) -> "pd.DataFrame":
    """One row per readable run: run, variant (its name without the seed, or `variants[path]`),
    method, seed; its clean-test accuracy three ways (``acc_final``, ``acc_last`` = mean of the
    last `k` trained epochs, ``acc_peak``; epoch 0 never counts); the same divided by its *clean
    twin*'s (``ratio_*``), the clean run with the same config and seed; and its UD against that
    twin (NaN where there is none, or either has no SAL)."""
    import pandas as pd

    from ..store.runs import open_run
    runs = []
    for p in paths:
        try:
            runs.append(open_run(p))
        except UlvizError:
            continue
    twins = {}
    for r in runs:
        if r.config.poison.method == "clean":
            twins.setdefault(clean_twin_key(r.config), r)
    names = {}
    for r in runs:  # one label per variant: the first run's name without its seed
        names.setdefault(_variant_key(r.config), _SEED_TOKEN.sub("", r.name) or r.name)
    rows = []
    for r in runs:
        twin = twins.get(clean_twin_key(r.config))
        ud = np.nan
        if twin is not None:
            result = group_ud({"twin": twin, "run": r})[1]
            ud = result.ud.get("run", np.nan) if result is not None else np.nan
        acc = accuracy_columns(r.metrics, k)
        base = accuracy_columns(twin.metrics, k) if twin is not None else {}
        variant = (variants or {}).get(Path(r.path)) or names[_variant_key(r.config)]
        rows.append({"run": r.name, "variant": variant, "method": r.config.poison.method,
                     "dataset": r.config.data.name, "model": r.config.model.name, "seed": r.config.train.seed,
                     **acc,
                     **{f"ratio_{a}": acc[f"acc_{a}"] / base[f"acc_{a}"] if base.get(f"acc_{a}") else np.nan
                        for a in ACCURACIES},
                     "UD": ud, "reference": twin.name if twin is not None else "", "path": str(r.path)})
    return pd.DataFrame(rows, columns=["run", "variant", "method", "dataset", "model", "seed", *SUMMARY_METRICS,
                                       "reference", "path"])


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of `values` (NaNs dropped): Student's t interval for the mean over seeds,
    since a handful of seeds is far from the normal limit; low = high = mean for one value, all
    NaN for none."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return np.nan, np.nan, np.nan
    mean = float(v.mean())
    if len(v) == 1:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return mean, mean - half, mean + half


def seed_summary(table: "pd.DataFrame", level: float = 0.95) -> "pd.DataFrame":
    """Per variant: the number of seeds, and for each accuracy reading, ratio and UD its mean over
    seeds with a `level` t interval (``<metric>_mean``, ``_lo``, ``_hi``) and sample std."""
    import pandas as pd

    rows = []
    for key, group in table.groupby(["variant", "method", "dataset", "model"], sort=False):
        row = dict(zip(["variant", "method", "dataset", "model"], key), seeds=group["seed"].nunique())
        for m in SUMMARY_METRICS:
            row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"] = mean_interval(group[m], level)
            row[f"{m}_std"] = float(group[m].std()) if group[m].notna().sum() > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_text(summary: "pd.DataFrame", metrics=("acc_final", "acc_last", "acc_peak", "ratio_last", "UD")) -> "pd.DataFrame":
    """A seed summary narrow enough for a terminal: per variant its seeds and each of `metrics`
    as "mean [lo, hi]"."""
    import pandas as pd

    def cell(row, m):
        mean, lo, hi = row[f"{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"]
        if np.isnan(mean):
            return "-"
        return f"{mean:.3f}" if lo == hi else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"
    return pd.DataFrame([{"variant": r["variant"], "seeds": r["seeds"], **{m: cell(r, m) for m in metrics}}
                         for _, r in summary.iterrows()])
