"""Defense studies: the grid, the table against an independent UD computation, the kept summary and the page."""
from dataclasses import replace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config
from ulviz import SALConfig, open_run, train
from ulviz.core.config import PoisonConfig
from ulviz.studies.defense_study import (NONE, defense_label, defense_study, load_study, save_study, study_configs,
                                         study_text)
from ulviz.core.errors import RunFileError
from ulviz.measure.ud import unlearnable_distance

CUTOUT = [{"name": "cutout", "params": {"size": 2}}]
CUT = "cutout(size=2)"  # its label: the size differs from the default


def test_labels_name_only_changed_parameters():
    assert defense_label([]) == NONE
    assert defense_label([{"name": "jpeg", "params": {"quality": 10}}]) == "jpeg"
    assert defense_label([{"name": "jpeg", "params": {"quality": 30}}, {"name": "mixup", "params": {}}]) == "jpeg(quality=30)+mixup"
    assert defense_label([{"name": "at", "params": {"steps": 2, "alpha": 4 / 255}}]) == "at(steps=2, alpha=4/255)"


def test_grid_has_a_clean_run_under_every_defense():
    base = tiny_config()
    configs = study_configs(base, {"noise": PoisonConfig("random")}, {NONE: [], "cutout": CUTOUT})
    assert list(configs) == ["none-clean", "none-noise", "cutout-clean", "cutout-noise"]
    assert configs["cutout-clean"].poison.method == "clean" and configs["cutout-clean"].train.defenses == CUTOUT
    assert configs["none-noise"].name == "noise" and configs["none-noise"].train.defenses == []


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    d = tmp_path_factory.mktemp("defense-grid")
    base = replace(tiny_config(epochs=3), sal=SALConfig(estimator="fast", subset=64))
    configs = study_configs(base, {"noise": PoisonConfig("random", params={"mode": "class", "eps": 0.3})},
                            {NONE: [], "cutout": CUTOUT})
    for stem, config in configs.items():
        train(config, d / f"{stem}.h5")
    train(replace(base, name="lonely", poison=PoisonConfig("random"),
                  train=replace(base.train, defenses=[{"name": "grayscale", "params": {}}])),
          d / "lonely.h5")  # a defense without a clean run of its own
    return d


def test_table_against_an_independent_computation(grid):
    paths = sorted(grid.glob("*.h5"))
    study = defense_study(paths)
    runs = {(r.name, defense_label(list(r.config.train.defenses))): r for r in map(open_run, paths)}
    for defense in (NONE, CUT):
        clean, noise = runs[("clean", defense)], runs[("noise", defense)]
        acc = lambda r: r.metrics["test_acc"].to_numpy()[1:][-4:].mean()  # trained epochs: row 0 is the initial model
        row = study.table[(study.table.method == "noise") & (study.table.defense == defense)].iloc[0]
        assert row.accuracy == pytest.approx(acc(noise)) and row.ratio == pytest.approx(acc(noise) / acc(clean))
        expected = unlearnable_distance(clean.sal["sal"], {"noise": noise.sal["sal"]})  # its own clean run only
        assert row.UD == pytest.approx(expected.ud["noise"])
        layers = study.layers("noise", defense)
        np.testing.assert_allclose(layers[defense].to_numpy(), expected.per_layer["noise"])
    assert study.pivot("UD").loc["clean"].dropna().tolist() == [1.0, 1.0]  # each clean run is its column's 1
    lonely = study.table[study.table.method == "lonely"].iloc[0]
    assert lonely.defense == "grayscale" and np.isnan(lonely.ratio) and np.isnan(lonely.UD)
    assert any("grayscale: no clean run" in n for n in study.notes)
    assert list(study.pivot("accuracy").columns) == [NONE, CUT, "grayscale"]
    assert list(study.pivot("accuracy").index)[0] == "clean"
    text = study_text(study)
    assert "ratio to clean training under the same defense" in text and f"{row.UD:.2f}" in text


def test_summary_round_trip_and_foreign_files(grid, tmp_path):
    study = defense_study(sorted(grid.glob("*.h5")))
    path = save_study(study, tmp_path / "s.h5", note="how it was made")
    back, note = load_study(path)
    assert note == "how it was made" and back.notes == study.notes
    for col in ("method", "defense", "run"):
        assert list(back.table[col]) == list(study.table[col])
    num = ["accuracy", "ratio", "UD", "learnable"]
    np.testing.assert_allclose(back.table[num].to_numpy(float), study.table[num].to_numpy(float))  # NaNs included
    np.testing.assert_allclose(back.per_layer["fraction"], study.per_layer["fraction"])
    with pytest.raises(RunFileError, match="not a ulviz defense-study summary"):
        load_study(grid / "none-clean.h5")  # a run file is not a summary
    (tmp_path / "junk.h5").write_bytes(b"junk")
    with pytest.raises(RunFileError):
        load_study(tmp_path / "junk.h5")


def test_page_on_defended_runs_and_on_the_bundled_study(grid, tmp_path, monkeypatch):
    from ulviz.studies.defense_study import bundled_study_path
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(grid))
    at = AppTest.from_file(str(ROOT / "pages/7_Defenses.py"), default_timeout=120).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == 3  # two heatmaps and the per-layer bars
    assert set(at.dataframe[0].value["defense"]) == {NONE, CUT, "grayscale"}
    at.selectbox(key="defense_choice").set_value(CUT).run()
    assert not at.exception
    train(tiny_config(epochs=1), tmp_path / "plain.h5")  # no defended run here
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "pages/7_Defenses.py"), default_timeout=120).run()
    assert not at.exception and not at.error
    if bundled_study_path().exists():
        assert "bundled" in at.info[0].value and len(at.get("plotly_chart")) >= 2
    else:
        assert "No run in the data directory" in at.info[0].value


def test_heatmaps_write_the_values_on_the_cells():
    import pandas as pd
    from ulviz.app import plots
    acc = pd.DataFrame({"none": [0.47, 0.21], "jpeg": [0.46, np.nan]}, index=["clean", "em"])
    ratio = pd.DataFrame({"none": [1.0, 0.45], "jpeg": [1.0, np.nan]}, index=["clean", "em"])
    fig = plots.defense_heatmap(acc, "accuracy", ratio)
    assert fig.data[0].text[1][0] == "0.21<br>(0.45)" and fig.data[0].text[1][1] == ""  # no run: empty cell
    assert list(fig.data[0].z[1][:1]) == [0.45]  # coloured by the ratio
    ud = plots.defense_heatmap(pd.DataFrame({"none": [1.0, 1.24]}, index=["clean", "em"]), "UD")
    assert ud.data[0].text[1][0] == "1.24" and ud.data[0].zmin == -1 and ud.data[0].zmax == 1
    # diverging around UD = 1 on a log scale: 1 at the centre, 0.5 and 2 equally far from it
    assert ud.data[0].z[0][0] == 0 and ud.data[0].z[1][0] == pytest.approx(np.log2(1.24))
    far = plots.defense_heatmap(pd.DataFrame({"none": [0.5, 4.0]}, index=["a", "b"]), "UD")
    assert far.data[0].zmax == 2 and list(np.ravel(far.data[0].z)) == [-1.0, 2.0]
    bars = plots.defense_layers(pd.DataFrame({"none": [1.0, 0.25], "jpeg": [0.5, 0.0]}, index=["conv1", "fc"]), "em")
    assert [t.name for t in bars.data] == ["em · none", "em · jpeg"] and list(bars.data[0].y) == [100.0, 25.0]
