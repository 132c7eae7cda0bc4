"""Grouping runs by any config field, with the mean and a 95% t interval checked by hand."""
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import tiny_config
from ulviz.measure.compare import (comparable, curve_band, filter_runs, flat_config, group_summary, main_axes,
                                   varying_fields)
from ulviz.core.errors import UlvizError


def _frame():
    # six runs: two methods x three seeds, plus a width that varies only for one of them
    acc = [0.80, 0.84, 0.86, 0.20, 0.30, 0.31]
    return pd.DataFrame({"run": [f"r{i}" for i in range(6)], "path": [f"/r{i}.h5" for i in range(6)],
                         "poison.method": ["clean"] * 3 + ["em"] * 3, "train.seed": [0, 1, 2] * 2,
                         "model.width": [8, 8, 8, 8, 8, 16], "epochs_done": 5,
                         "acc_final": acc, "acc_last": acc, "acc_peak": acc,
                         "ratio_final": np.nan, "ratio_last": np.nan, "ratio_peak": np.nan, "UD": [1, 1, 1, .5, .7, np.nan]})


def test_group_mean_and_t_interval_by_hand():
    summary = group_summary(_frame(), ["poison.method"], ["acc_last", "UD"])
    assert list(summary["group"]) == ["method=clean", "method=em"] and list(summary["n"]) == [3, 3]
    em = summary.iloc[1]
    v = np.array([0.20, 0.30, 0.31])
    half = stats.t.ppf(0.975, df=2) * v.std(ddof=1) / np.sqrt(3)  # 4.303 x s / sqrt(3)
    assert em["acc_last_mean"] == pytest.approx(v.mean())
    assert em["acc_last_lo"] == pytest.approx(v.mean() - half) and em["acc_last_hi"] == pytest.approx(v.mean() + half)
    # UD: the NaN of the run without one is left out: two values, t with one degree of freedom
    u = np.array([0.5, 0.7])
    assert em["UD_mean"] == pytest.approx(0.6)
    assert em["UD_hi"] - em["UD_mean"] == pytest.approx(stats.t.ppf(0.975, 1) * u.std(ddof=1) / np.sqrt(2))


def test_group_by_two_fields_and_a_group_of_one():
    summary = group_summary(_frame(), ["poison.method", "model.width"], ["acc_last"])
    assert list(summary["n"]) == [3, 2, 1]
    one = summary[summary["group"] == "method=em, width=16"].iloc[0]
    assert one["acc_last_lo"] == one["acc_last_mean"] == one["acc_last_hi"] == pytest.approx(0.31)
    assert group_summary(_frame(), [], ["acc_last"])["n"].tolist() == [1] * 6  # no field: each run alone


def test_filter_on_any_field_compares_as_text():
    frame = _frame()
    assert list(filter_runs(frame, {"model.width": ["16"]})["run"]) == ["r5"]
    assert list(filter_runs(frame, {"poison.method": ["em"], "train.seed": [0, 2]})["run"]) == ["r3", "r5"]
    assert filter_runs(frame, {"poison.method": []}).empty
    with pytest.raises(UlvizError, match="no config field"):
        filter_runs(frame, {"model.depth": [1]})
    with pytest.raises(UlvizError, match="group by"):
        group_summary(frame, ["model.depth"])


def test_varying_fields_are_the_axes_and_main_axes_drop_the_seed():
    frame = _frame()
    assert set(varying_fields(frame)) == {"poison.method", "train.seed", "model.width"}
    assert main_axes(frame) == ["poison.method", "model.width"]


def test_curve_band_per_epoch_by_hand():
    a = pd.DataFrame({"epoch": [0, 1, 2], "test_acc": [0.1, 0.5, 0.7]})
    b = pd.DataFrame({"epoch": [0, 1, 2], "test_acc": [0.1, 0.7, 0.9]})
    c = pd.DataFrame({"epoch": [0, 1], "test_acc": [0.1, 0.6]})  # a shorter run counts where it has the epoch
    band = curve_band([a, b, c]).set_index("epoch")
    assert band.loc[0, "lo"] == pytest.approx(0.1) and band.loc[0, "hi"] == pytest.approx(0.1)  # no spread: no width
    v = np.array([0.5, 0.7, 0.6])
    half = stats.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert band.loc[1, "mean"] == pytest.approx(0.6) and band.loc[1, "hi"] == pytest.approx(0.6 + half)
    assert band.loc[2, "n"] == 2 and band.loc[2, "mean"] == pytest.approx(0.8)


def test_flat_config_has_dotted_fields_and_comparable_checks_dataset_model_width():
    cfg = tiny_config(epochs=1)
    flat = flat_config(replace(cfg, poison=replace(cfg.poison, method="random", params={"eps": 0.03})))
    assert flat["poison.method"] == "random" and flat["poison.params.eps"] == 0.03 and "train.seed" in flat

    class R:  # only the config matters
        def __init__(self, config):
            self.config = config
    runs = {"clean": R(cfg), "wide": R(replace(cfg, model=replace(cfg.model, width=64))),
            "twin": R(replace(cfg, poison=replace(cfg.poison, method="random")))}
    keep, left = comparable(runs, "clean")
    assert keep == ["clean", "twin"] and set(left) == {"wide"} and "width 64" in left["wide"]
