"""The sharpness-atlas and layer-surgery pages with streamlit's AppTest, on runs written here and on the demo."""
import shutil

import numpy as np
from dataclasses import replace

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config
from ulviz import SALConfig, open_run, train
from ulviz.measure.sharpness import SharpnessConfig, compute_run_sharpness
from ulviz.store.analyses import read_sharpness

ATLAS, SURGERY = "pages/8_Sharpness_atlas.py", "pages/9_Layer_surgery.py"
DEMO = ROOT / "data" / "demo"


def _app(page, data_dir, monkeypatch):
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(data_dir))
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / page), default_timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("atlas")
    cfg = replace(tiny_config(epochs=2), name="clean", sal=SALConfig(estimator="fast", subset=64))
    train(cfg, d / "clean.h5")
    train(replace(cfg, name="random", poison=replace(cfg.poison, method="random", params={"mode": "class", "eps": 0.2})),
          d / "random.h5")
    return d


def test_atlas_page_without_sharpness_offers_the_command_and_computes_on_request(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(ATLAS, tmp_path / "s", monkeypatch).run()
    assert not at.exception and not at.error
    assert any("ulviz sharpness" in i.value for i in at.info) and len(at.button) == 2
    # before anything is computed: the data-free measures of both runs, from their snapshots
    assert len(at.get("plotly_chart")) == 2 * 2 + 1  # norm and distance heatmaps per run, the SAL bars
    at = at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert set(read_sharpness(tmp_path / "s" / "clean.h5")) == {"eig", "trace", "adaptive", "norm", "dist_init"}
    assert len(at.get("plotly_chart")) == 3 + 2 * 2 + 1  # the data measures of one run, both runs' norms, bars


def test_atlas_page_with_both_runs_computed(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    for name in ("clean", "random"):
        compute_run_sharpness(tmp_path / "s" / f"{name}.h5", SharpnessConfig(subset=64, power_iters=3, probes=2),
                              device="cpu")
    at = _app(ATLAS, tmp_path / "s", monkeypatch).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 5 * 2 + 1  # two heatmaps per measure, the correlation bars
    table = at.dataframe[0].value
    assert set(table["run"]) == {"clean", "random"} and len(table) == 10
    assert not at.info


def test_surgery_page_operates_and_transplants_blocks(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(SURGERY, tmp_path / "s", monkeypatch).run()
    assert not at.exception and not at.error
    at.text_input(key="surgery_spec").set_value("all")
    at = at.button(key="surgery_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    clean_acc = open_run(tmp_path / "s" / "clean.h5").metrics.test_acc.iloc[-1]
    protected_acc = open_run(tmp_path / "s" / "random.h5").metrics.test_acc.iloc[-1]
    assert at.metric[0].value == f"{clean_acc:.3f}" and at.metric[1].value == f"{protected_acc:.3f}"
    assert at.metric[3].value == ("no gap" if clean_acc == protected_acc else "100%")
    at = at.button(key="surgery_blocks").click().run()
    assert not at.exception and len(at.get("plotly_chart")) == 2  # the mean-SAL bars, then the blocks


def test_surgery_page_reports_a_bad_spec_in_one_box(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(SURGERY, tmp_path / "s", monkeypatch).run()
    at.text_input(key="surgery_spec").set_value("nosuch")
    at = at.button(key="surgery_go").click().run()
    assert not at.exception and len(at.error) == 1 and "no layer matches" in at.error[0].value


@pytest.mark.parametrize("page", [ATLAS, SURGERY])
def test_pages_render_on_the_bundled_demo(page, monkeypatch, tmp_path):
    if not (DEMO / "clean.h5").exists():
        pytest.skip("no bundled demo")
    shutil.copytree(DEMO, tmp_path / "demo")
    at = _app(page, tmp_path, monkeypatch).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_weight_measures_from_snapshots_by_hand(study):
    from ulviz.measure.sharpness import weight_measures
    run = open_run(study / "random.h5")
    got = weight_measures(run)
    init, last = run.snapshot(0), run.snapshot(run.epochs_done)
    name = run.layer_names[-1]
    j = run.layer_names.index(name)
    assert list(got["norm"]["epochs"]) == list(range(1, run.epochs_done + 1))
    assert got["norm"]["values"][-1, j] == pytest.approx(float(np.sqrt((last[name].double() ** 2).sum())))
    assert got["dist_init"]["values"][-1, j] == pytest.approx(
        float(np.sqrt(((last[name].double() - init[name].double()) ** 2).sum())))
