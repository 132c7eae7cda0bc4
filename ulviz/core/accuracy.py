"""A run's accuracy read three ways: final, mean of the last k trained epochs, and peak.

One place for it, so the UD table, the sweep CSV, the cross-task and defense tables, the
dashboard and the benchmarks agree. Row 0 of a run's metrics is the untrained model (epoch 0):
it is never a trained epoch, so it never enters any of the three (a 3-epoch run's "mean of the
last 4" used to average the untrained 0.1 in).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

LAST_K = 4  # epochs averaged by default: with the paper recipe's constant lr single epochs are noisy


@dataclass(frozen=True)
class AccuracySummary:
    """Accuracy of one run on one split, over its trained epochs (NaN when it has none)."""

    final: float  # at the last trained epoch
    last_k: float  # mean over the last k trained epochs (fewer when the run has fewer)
    peak: float  # the best trained epoch (the literature's "best epoch" report)
    k: int  # the k asked for
    epochs: int  # trained epochs the run has (those counted)


def trained_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics rows of trained epochs: epoch >= 1 (row 0 is the initial model)."""
    if "epoch" in metrics.columns:
        return metrics[metrics["epoch"] >= 1]
    return metrics.iloc[1:]


def accuracy_summary(metrics: pd.DataFrame, k: int = LAST_K, column: str = "test_acc") -> AccuracySummary:
    """Final, last-k mean and peak of `column` over the trained epochs of a run's metrics table."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values = trained_rows(metrics)[column].astype(float).to_numpy() if column in metrics.columns else []
    if len(values) == 0:
        nan = math.nan
        return AccuracySummary(nan, nan, nan, k, 0)
    return AccuracySummary(float(values[-1]), float(values[-k:].mean()), float(values.max()), k, len(values))


def accuracy_columns(metrics: pd.DataFrame, k: int = LAST_K, column: str = "test_acc") -> dict[str, float]:
    """``acc_final``, ``acc_last`` (mean of the last `k` trained epochs) and ``acc_peak`` of a
    run's `column`, as table columns (:func:`accuracy_summary`)."""
    s = accuracy_summary(metrics, k, column)
    return {"acc_final": s.final, "acc_last": s.last_k, "acc_peak": s.peak}
