"""The cross-task study: grid, reuse, the table's ratios and UD per task, the page."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_config
from ulviz import DataConfig, ModelConfig, PoisonConfig, SALConfig, open_run
from ulviz.studies.crosstask import crosstask_table, grid_configs, run_grid, task_score


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    base = tiny_config(epochs=2)
    configs = grid_configs(base, {"random": PoisonConfig("random", params={"mode": "class", "eps": 0.3})},
                           ["classify", "rotation"])
    paths = run_grid(configs, d, SALConfig(estimator="fast", subset=100), [1, 2], say=lambda t: None)
    return d, configs, paths


def test_grid_names_and_reuse(grid):
    d, configs, paths = grid
    assert list(configs) == ["classify-clean", "classify-random", "rotation-clean", "rotation-random"]
    assert configs["rotation-random"].train.task == "rotation" and configs["rotation-random"].name == "random"
    stamps = [p.stat().st_mtime_ns for p in paths]
    said = []
    run_grid(configs, d, say=said.append)  # complete runs of the same config are not trained again
    assert [p.stat().st_mtime_ns for p in paths] == stamps and all("reused" in s for s in said)


def test_table_ratios_probe_and_ud_per_task(grid):
    d, configs, paths = grid
    table = crosstask_table(paths).set_index(["task", "label"])
    for task in ("classify", "rotation"):
        clean = open_run(d / f"{task}-clean.h5").metrics["test_acc"].iloc[1:].iloc[-4:].mean()  # trained epochs only
        other = open_run(d / f"{task}-random.h5").metrics["test_acc"].iloc[1:].iloc[-4:].mean()  # trained epochs only
        assert table.loc[(task, "clean"), "ratio"] == 1.0 and table.loc[(task, "clean"), "UD"] == 1.0
        assert table.loc[(task, "random"), "ratio"] == pytest.approx(other / clean)
        assert np.isfinite(table.loc[(task, "random"), "UD"])
        assert 0 <= table.loc[(task, "random"), "probe"] <= 1


def test_a_run_on_other_data_is_not_compared_with_this_clean_run(grid, tmp_path):
    """A digits run beside the synthetic grid (same task, model and layer names) has no clean run
    of its own data: no ratio, no UD, and the grid's own figures do not change."""
    from ulviz import train
    d, _, paths = grid
    other = replace(tiny_config(epochs=2), name="digits-random", data=DataConfig("digits"),
                    poison=PoisonConfig("random"), sal=SALConfig(estimator="fast", subset=100))
    train(other, tmp_path / "digits-random.h5")
    alone = crosstask_table(paths, probe=False)
    mixed = crosstask_table([*paths, tmp_path / "digits-random.h5"], probe=False)
    row = mixed.set_index("label").loc["digits-random"]
    assert np.isnan(row["ratio"]) and np.isnan(row["UD"]) and np.isfinite(row["score"])
    assert mixed.iloc[:len(alone)][["ratio", "UD"]].equals(alone[["ratio", "UD"]])


def test_segment_score_is_the_iou_of_the_final_weights(tmp_path):
    from ulviz import train
    from ulviz.measure.landscape.runs import run_data, run_model
    cfg = replace(tiny_config(epochs=1), data=DataConfig("digits"), model=ModelConfig("fcn", width=4))
    cfg = replace(cfg, train=replace(cfg.train, task="segment"))
    train(cfg, tmp_path / "seg.h5")
    run = open_run(tmp_path / "seg.h5")
    metric, score = task_score(run)
    model = run_model(run)
    x, y = run_data(run, "test")
    with torch.no_grad():
        pred = model(x).argmax(1)
    inter = sum(int(((p == 1) & (t == 1)).sum()) for p, t in zip(pred, y))  # a plain loop over images
    union = sum(int(((p == 1) | (t == 1)).sum()) for p, t in zip(pred, y))
    assert metric == "IoU" and score == pytest.approx(inter / union)


def test_page(grid, monkeypatch):
    from streamlit.testing.v1 import AppTest
    d, _, _ = grid
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(d))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages/6_Cross_task.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 1  # the heatmap at once; the probes only when asked
    assert "probe" not in at.dataframe[0].value.columns  # no column of blanks before they are computed
    at = next(b for b in at.button if "linear probes" in b.label).click().run()
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert at.dataframe[0].value["probe"].between(0, 1).all()
