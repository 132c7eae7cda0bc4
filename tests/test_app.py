"""Every page of the dashboard with streamlit's AppTest: on the bundled demo and on runs written here."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import signal
import time
from dataclasses import replace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config
from ulviz import SALConfig, open_run, train
from ulviz.app.jobs import UPLOAD_LIMIT, Job, JobManager, add_run_file, inside
from ulviz.core.errors import UlvizError
from ulviz.studies.processes import safe_name

PAGES = ["pages/1_Loss_landscape.py", "pages/2_SAL.py", "pages/3_Optimization_paths.py",
         "pages/4_Unlearnable_Distance.py", "pages/10_Compare_runs.py", "pages/11_Perturbations.py"]  # the run pages; the teaching page has no runs (tests/test_teaching.py)
DEMO = ROOT / "data" / "demo"


def _app(path, data_dir, monkeypatch):
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(data_dir))
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / path), default_timeout=180)


def _charts(at):
    return at.get("plotly_chart")


def _computed(at):
    """The page after its "Compute ..." button (the landscape page computes only on request), if any."""
    go = [b for b in at.button if b.label.startswith("Compute")]
    return go[0].click().run() if go else at


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny study written by the test: clean and a protected twin, with SAL."""
    d = tmp_path_factory.mktemp("study")
    cfg = replace(tiny_config(epochs=3), name="clean", sal=SALConfig(estimator="fast", subset=64))
    train(cfg, d / "clean.h5")
    train(replace(cfg, name="random", poison=replace(cfg.poison, method="random", params={"mode": "class", "eps": 0.2})),
          d / "random.h5")
    return d


def test_home_lists_runs_and_reports_bad_files(tmp_path, monkeypatch):
    train(tiny_config(epochs=1), tmp_path / "good.h5")
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    # a summary file ulviz wrote (the Defenses page's) is not a run, nor an error to report
    import pandas as pd
    from ulviz.store.tables import write_tables
    write_tables(tmp_path / "studies" / "defenses.h5", "defense-study", {"t": pd.DataFrame({"a": [1]})})
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["status"]) == {"complete", "unreadable"}
    assert any("broken.h5" in e.value and "not an HDF5 file" in e.value for e in at.error)
    assert sum("broken.h5" in e.value for e in at.error) == 1
    assert len(at.error) == 1 and len(table) == 2  # the summary file neither listed nor reported
    assert "error" in table.columns  # the broken file's error is in its row
    assert len(_charts(at)) == 1  # accuracy curves of the readable run


def test_home_shows_provenance_on_request(tmp_path, monkeypatch):
    train(tiny_config(epochs=1), tmp_path / "good.h5")
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert "code_digest" not in at.dataframe[0].value.columns  # not by default: the table stays narrow
    at = at.toggle(key="home_provenance").set_value(True).run()
    table = at.dataframe[0].value
    assert not at.exception
    assert table["code_digest"].iloc[0] == open_run(tmp_path / "good.h5").provenance["environment"]["code_digest"]
    assert table["protection"].iloc[0] in ("stored", "re-derived") and table["threads"].iloc[0] >= 1


def test_home_with_no_runs(tmp_path, monkeypatch):
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert not at.exception and "No run files" in at.info[0].value


@pytest.mark.parametrize("page", ["app.py"] + PAGES)
def test_every_page_on_the_bundled_demo(page, monkeypatch, tmp_path):
    if not (DEMO / "clean.h5").exists():
        pytest.skip("no bundled demo")
    shutil.copytree(DEMO, tmp_path / "demo")  # a copy laid out as data/ is in a checkout
    if (DEMO.parent / "studies").is_dir():  # with the bundled summary files beside the runs
        shutil.copytree(DEMO.parent / "studies", tmp_path / "studies")
    files = sorted((tmp_path / "demo").glob("*.h5"))
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    at = _app(page, tmp_path, monkeypatch).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(_charts(at)) >= 1
    assert len(at.caption) >= 2  # every figure has its caption
    # the demo opens on its caches: nothing to compute for the default view
    assert not [i.value for i in at.info if "Not cached yet" in i.value]
    # and browsing never writes into the demo's run files (the bundle stays as committed)
    assert {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files} == before


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_runs_written_by_the_test(page, study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _computed(_app(page, tmp_path / "s", monkeypatch).run())
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(_charts(at)) >= 1


def test_landscape_page_widgets_and_line_view(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _computed(_app(PAGES[0], tmp_path / "s", monkeypatch).run())
    assert not at.exception
    assert at.sidebar.multiselect[0].value == ["clean", "random"]  # clean first, by default
    before = len(_charts(at))
    at = _computed(at.sidebar.radio[0].set_value("line").run())
    assert not at.exception and len(_charts(at)) == 2 and before == 2  # contours + surface; loss + accuracy
    at = _computed(at.sidebar.radio[0].set_value("interp").run())
    assert not at.exception and len(_charts(at)) == 2


def test_ud_page_table_and_download(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(PAGES[3], tmp_path / "s", monkeypatch).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["run"]) == ["clean", "random"] and table["UD"].iloc[0] == pytest.approx(1.0)
    assert {"acc_final", "acc_last", "acc_peak"} <= set(table.columns)  # accuracy three ways
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Download the table (CSV)" in labels
    assert {"PNG", "SVG", "PDF", "CSV"} <= set(labels) or "CSV" in labels  # every chart's exports
    # the sensitivity panel: one row per protected run, the reference column equal to the table's UD
    variants = at.dataframe[1].value
    assert list(variants.index) == ["random"] and "median rule" in variants.columns
    assert variants["midpoint (reference)"].iloc[0] == pytest.approx(table["UD"].iloc[1])


def test_every_chart_has_its_export_buttons(study, monkeypatch, tmp_path):
    from ulviz.app import plots

    shutil.copytree(study, tmp_path / "s")
    at = _app("pages/2_SAL.py", tmp_path / "s", monkeypatch).run()
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    per_chart = 1 + (len(plots.EXPORT_FORMATS) if plots.export_problem() is None else 0)
    assert len(labels) == per_chart * len(_charts(at))
    assert labels.count("CSV") == len(_charts(at))


def test_landscape_default_leaves_out_incomparable_runs_and_says_why(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    cfg = replace(tiny_config(epochs=1), name="wide", model=replace(tiny_config().model, width=64))
    train(cfg, tmp_path / "s" / "wide.h5")
    at = _app(PAGES[0], tmp_path / "s", monkeypatch).run()
    assert not at.exception
    assert at.sidebar.multiselect[0].value == ["clean", "random"]
    assert any("wide" in c.value and "width 64" in c.value for c in at.sidebar.caption)
    at = at.sidebar.multiselect[0].set_value(["clean", "wide"]).run()
    assert any("Not comparable" in w.value and "wide" in w.value for w in at.warning)


def test_sal_page_says_which_runs_have_no_sal_in_the_window(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    train(replace(tiny_config(epochs=2), name="nosal"), tmp_path / "s" / "nosal.h5")
    cfg = replace(tiny_config(epochs=1), name="late", sal=SALConfig(estimator="fast", subset=64))
    train(cfg, tmp_path / "s" / "late.h5")
    at = _app("pages/2_SAL.py", tmp_path / "s", monkeypatch).run()
    at = at.sidebar.multiselect[0].set_value(["clean", "late"]).run()
    at = at.sidebar.select_slider[0].set_value((2, 3)).run()  # late has SAL at epoch 1 only
    assert not at.exception
    assert any("No SAL in" in i.value and "late" in i.value for i in at.info)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in _charts(at)]
    assert any(t.endswith(": clean") or ": clean (" in t for t in titles)  # the clean run's heatmap
    assert not any("late" in t for t in titles)  # no empty axes for the run without SAL there


def test_pages_without_sal_or_runs_explain_themselves(tmp_path, monkeypatch):
    train(tiny_config(epochs=1), tmp_path / "nosal.h5")
    for page in PAGES:
        at = _app(page, tmp_path, monkeypatch).run()
        assert not at.exception
        assert at.info or at.warning or _charts(at)


@pytest.mark.parametrize("page", ["app.py"] + PAGES[:3])
def test_corrupt_file_beside_good_ones_gives_an_error_box_on_every_page(page, study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    (tmp_path / "s" / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    at = _app(page, tmp_path / "s", monkeypatch).run()
    assert not at.exception
    assert sum("junk.h5" in e.value for e in at.error) == 1  # one box, not one per reader


def test_launch_a_tiny_run_from_the_home_page(tmp_path, monkeypatch):
    at = _app("app.py", tmp_path, monkeypatch).run()
    form_inputs = {w.label: w for w in at.text_input}
    form_inputs["Run name"].set_value("tiny job")
    boxes = {w.label: w for w in at.selectbox}
    boxes["Dataset"].set_value("synthetic")
    boxes["Model"].set_value("mlp")
    boxes["Unlearnable method"].set_value("random")
    boxes["SAL after every epoch"].set_value("fast")
    {w.label: w for w in at.number_input}["Epochs"].set_value(2)
    _by_label(at.button, "Launch").click().run()
    assert not at.exception and any("launched tiny-job" in s.value for s in at.success), [e.value for e in at.error]
    job = JobManager(tmp_path).jobs()[0]
    deadline = time.time() + 120
    while time.time() < deadline and (job.alive() or not (tmp_path / "runs" / "tiny-job.h5").exists()):
        time.sleep(0.5)
    run = open_run(tmp_path / "runs" / "tiny-job.h5")
    assert run.status == "complete" and run.epochs_done == 2 and run.config.poison.method == "random"
    assert len(run.sal_epochs) == 2
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert "tiny-job" in set(at.dataframe[0].value["name"])


def test_launch_form_reports_a_bad_parameter_and_launches_nothing(tmp_path, monkeypatch):
    at = _app("app.py", tmp_path, monkeypatch).run()
    {w.label: w for w in at.selectbox}["Unlearnable method"].set_value("random")
    {w.label: w for w in at.text_input}["Method parameters (key=value, comma-separated)"].set_value("eps=8/255")
    _by_label(at.button, "Launch").click().run()
    assert not at.exception and not at.success
    assert any("eps must be a number, got '8/255'" in e.value for e in at.error), [e.value for e in at.error]
    assert JobManager(tmp_path).jobs() == []


def test_jobs_queue_cancel_and_refuse_escapes(tmp_path):
    jobs = JobManager(tmp_path, max_running=1)
    a = jobs.launch(replace(tiny_config(epochs=100_000), name="long"))  # never ends by itself
    b = jobs.launch(replace(tiny_config(epochs=1), name="next"))
    assert a.state == "started" and b.state == "queued"  # one at a time: the second waits
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if open_run(tmp_path / "runs" / "long.h5").epochs_done >= 1:
                break
        except UlvizError:
            pass
        time.sleep(0.1)
    jobs.cancel(a.id)
    deadline = time.time() + 120  # a loaded machine (CI's 2 cores) can take a while to stop it
    while time.time() < deadline and jobs.get(a.id).alive():
        time.sleep(0.2)
    if jobs.get(a.id).alive():  # never leave a 100,000-epoch job behind a failed test
        os.killpg(jobs.get(a.id).pid, signal.SIGKILL)
    assert open_run(tmp_path / "runs" / "long.h5").status == "cancelled"
    assert jobs.poll()[-1].state == "started"  # the queued job starts once the slot is free
    with pytest.raises(UlvizError, match="already exists"):
        jobs.launch(replace(tiny_config(epochs=1), name="long"))
    assert safe_name("../../etc/passwd") == "etc-passwd"
    with pytest.raises(UlvizError):
        safe_name("../..")
    with pytest.raises(UlvizError, match="outside the data directory"):
        inside(tmp_path, "../elsewhere.h5")
    with pytest.raises(UlvizError, match="outside the data directory"):
        inside(tmp_path, "/etc/passwd")


def test_adding_a_run_file_validates_it_first(study, tmp_path):
    """The home page's "Load a run file": a good file lands under uploads/, a bad one never does."""
    good = (study / "clean.h5").read_bytes()
    target = add_run_file(tmp_path, "my run!.h5", good)
    assert target == (tmp_path / "uploads" / "my-run.h5").resolve()
    assert open_run(target).name == "clean"
    with pytest.raises(UlvizError, match="junk.h5"):
        add_run_file(tmp_path, "junk.h5", b"not hdf5 at all")
    with pytest.raises(UlvizError, match="over the 200 MB limit"):
        add_run_file(tmp_path, "big.h5", bytes(UPLOAD_LIMIT + 1))
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["my-run.h5"]


# -- the data directory, run management, the launch form ----------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Two tiny runs without SAL (so the home page has no UD section): clean and random."""
    d = tmp_path_factory.mktemp("plain")
    cfg = replace(tiny_config(epochs=1), name="clean")
    train(cfg, d / "clean.h5")
    train(replace(cfg, name="random", poison=replace(cfg.poison, method="random")), d / "random.h5")
    return d


def _by_label(widgets, label):
    return next(w for w in widgets if w.label == label)


def _box(at):
    return _by_label(at.sidebar.text_input, "Data directory")


def _figures(at):
    return [json.loads(c.proto.spec) for c in _charts(at)]


def _array(value) -> np.ndarray:
    """A figure array as sent to the browser: plotly encodes numpy arrays as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        a = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return a.reshape([int(n) for n in str(value["shape"]).split(",")]) if "shape" in value else a
    return np.asarray(value)


def _blocks(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _blocks(child)


def test_data_directory_survives_page_switches_and_empty_means_the_default(tmp_path, monkeypatch):
    default, custom = tmp_path / "default", tmp_path / "custom"
    default.mkdir()
    custom.mkdir()
    at = _app("app.py", default, monkeypatch).run()
    assert _box(at).value == str(default)
    _box(at).set_value(str(custom)).run()
    for page in PAGES + ["app.py"]:  # Streamlit drops a widget's key when another page runs
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert _box(at).value == str(custom), page
    assert at.subheader[0].value == f"Runs in {custom}"
    _box(at).set_value("   ").run()  # emptied: the default directory, never the working directory
    assert _box(at).value == str(default) and at.subheader[0].value == f"Runs in {default}"
    at.switch_page(PAGES[1]).run()
    assert _box(at).value == str(default)


def test_sal_page_one_colour_range_and_the_epoch_window(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(PAGES[1], tmp_path / "s", monkeypatch).run()
    assert not at.exception
    sal = {n: open_run(tmp_path / "s" / f"{n}.h5").sal_frame() for n in ("clean", "random")}
    heat = [f for f in _figures(at) if f["data"][0]["type"] == "heatmap"]
    assert len(heat) == 2
    top = max(float(f.to_numpy().max()) for f in sal.values())
    assert [(f["data"][0]["zmin"], f["data"][0]["zmax"]) for f in heat] == [(0.0, pytest.approx(top))] * 2
    assert any("fast SAL" in c.value and "first 64 samples" in c.value for c in at.caption)  # how it was measured

    at.sidebar.select_slider[0].set_value((2, 3)).run()
    assert not at.exception
    figures = _figures(at)
    # the histogram is drawn as step outlines: each bin's count twice, once per edge of the bin
    hist = next(f for f in figures if f["layout"]["title"]["text"].startswith("Per-layer SAL"))
    assert "epochs 2–3" in hist["layout"]["title"]["text"]
    assert sum(_array(t["y"]).sum() / 2 for t in hist["data"]) == sum(f.loc[2:3].size for f in sal.values())
    heat = [f for f in figures if f["data"][0]["type"] == "heatmap"]
    assert all(list(_array(f["data"][0]["x"])) == [2, 3] for f in heat)
    top = max(float(f.loc[2:3].to_numpy().max()) for f in sal.values())
    assert [f["data"][0]["zmax"] for f in heat] == [pytest.approx(top)] * 2
    # the per-layer table counts only the window's epochs, against the clean run's threshold
    from ulviz.measure.ud import clean_threshold
    threshold = clean_threshold(sal["clean"].to_numpy())[0]
    table = at.dataframe[0].value
    for name, frame in sal.items():
        expected = (frame.loc[2:3].to_numpy() > threshold).mean(axis=0)
        np.testing.assert_allclose(table[name].to_numpy(dtype=float), expected)


def test_hidden_runs_leave_every_page_and_stay_hidden(plain, monkeypatch, tmp_path):
    shutil.copytree(plain, tmp_path / "p")
    at = _app("app.py", tmp_path / "p", monkeypatch).run()
    assert list(at.dataframe[0].value["run"]) == ["clean", "random"]
    random = str((tmp_path / "p" / "random.h5").resolve())
    _by_label(at.multiselect, "Hidden runs (this session: every page leaves them out)").set_value([random]).run()
    assert not at.exception and list(at.dataframe[0].value["run"]) == ["clean"]
    at.switch_page(PAGES[2]).run()
    assert not at.exception
    assert _by_label(at.sidebar.selectbox, "Run").options == ["clean"]
    at.switch_page("app.py").run()
    hidden = _by_label(at.multiselect, "Hidden runs (this session: every page leaves them out)")
    assert hidden.value == [random] and list(at.dataframe[0].value["run"]) == ["clean"]


def test_rename_and_delete_from_the_home_page(plain, monkeypatch, tmp_path):
    d = tmp_path / "p"
    shutil.copytree(plain, d)
    at = _app("app.py", d, monkeypatch).run()
    _by_label(at.selectbox, "Rename run").set_value(str((d / "random.h5").resolve()))
    _by_label(at.text_input, "New name (stored in the run file)").set_value("random, eps 8/255")
    _by_label(at.button, "Rename").click().run()
    assert not at.exception and not at.error
    assert any("renamed random to random, eps 8/255" in s.value for s in at.success)  # shown after the rerun
    assert open_run(d / "random.h5").name == "random, eps 8/255"
    assert "random, eps 8/255" in set(at.dataframe[0].value["run"])

    _by_label(at.selectbox, "Delete run file").set_value(str((d / "clean.h5").resolve()))
    assert _by_label(at.button, "Delete").disabled  # not before the confirmation
    _by_label(at.checkbox, "Yes, delete this file from disk for good").check().run()
    _by_label(at.button, "Delete").click().run()
    assert not at.exception and not (d / "clean.h5").exists()
    assert list(at.dataframe[0].value["run"]) == ["random, eps 8/255"]
    assert not _by_label(at.checkbox, "Yes, delete this file from disk for good").value  # asked again next time
    assert any("deleted" in s.value for s in at.success)


def test_load_a_run_file_named_by_its_directory(plain, monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    at = _app("app.py", tmp_path / "data", monkeypatch).run()
    typed = _by_label(at.text_input, "Path of a run file (.h5), or of a directory holding some, "
                                     "to copy into the data directory")
    typed.set_value(str(tmp_path / "empty")).run()
    assert any("no .h5 file" in i.value for i in at.info)
    typed.set_value(str(plain)).run()
    _by_label(at.selectbox, f"Run files in {plain}").set_value("random.h5")
    _by_label(at.button, "Load").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("loaded random.h5" in s.value for s in at.success)  # survives the rerun that shows the run
    assert open_run(tmp_path / "data" / "uploads" / "random.h5").name == "random"


def test_launch_form_with_a_local_dataset_and_a_recipe(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    npz = tmp_path / "files" / "tiny.npz"
    npz.parent.mkdir()
    np.savez(npz, x_train=rng.integers(0, 256, (64, 8, 8), dtype=np.uint8), y_train=rng.integers(0, 3, 64),
             x_test=rng.integers(0, 256, (32, 8, 8), dtype=np.uint8), y_test=rng.integers(0, 3, 32))
    data = tmp_path / "data"
    at = _app("app.py", data, monkeypatch).run()
    form = next(b for b in _blocks(at.main) if getattr(b, "type", None) == "form")
    assert form.proto.form.enter_to_submit is False  # Enter in the name box does not launch
    assert _by_label(at.selectbox, "SAL after every epoch").value == "fast"  # as `ulviz train`
    _by_label(at.text_input, "Run name").set_value("npz run")
    _by_label(at.selectbox, "Dataset").set_value("npz")
    _by_label(at.text_input, "Dataset files (directory, or .npz file)").set_value(str(npz))
    _by_label(at.selectbox, "Model").set_value("mlp")
    _by_label(at.selectbox, "Unlearnable method").set_value("clean")
    _by_label(at.selectbox, "Training recipe").set_value("paper")
    _by_label(at.number_input, "Learning rate (0 = the recipe's)").set_value(0.01)
    _by_label(at.number_input, "Batch size (0 = the recipe's)").set_value(16)
    _by_label(at.number_input, "Epochs").set_value(1)
    _by_label(at.selectbox, "SAL after every epoch").set_value("none")
    _by_label(at.button, "Launch").click().run()
    assert not at.exception and any("launched npz-run" in s.value for s in at.success), [e.value for e in at.error]
    job = JobManager(data).jobs()[0]
    assert job.config["data"] == {"name": "npz", "data_dir": str(npz), "allow_pickle": False,
                                  "train_limit": None, "test_limit": None}
    train_cfg = job.config["train"]
    assert (train_cfg["recipe"], train_cfg["lr"], train_cfg["batch_size"], train_cfg["schedule"]) == \
        ("paper", 0.01, 16, "constant")  # the recipe's schedule, the overrides given
    deadline = time.time() + 120  # the job runs in the data directory: the dataset path must still hold
    while time.time() < deadline and job.alive():
        time.sleep(0.5)
    run = open_run(data / "runs" / "npz-run.h5")
    assert run.status == "complete" and run.config.data.name == "npz", job.log_tail()


def test_clear_finished_jobs_from_the_home_page(tmp_path, monkeypatch):
    jobs = JobManager(tmp_path)
    jobs.dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    jobs._save(Job("old", "old", str(tmp_path / "runs" / "old.h5"), str(jobs.dir / "old.log"),
                   tiny_config().to_dict(), "started", proc.pid, created=1.0))
    jobs._save(Job("next", "next", str(tmp_path / "runs" / "next.h5"), str(jobs.dir / "next.log"),
                   tiny_config().to_dict(), "queued", os.getpid(), created=2.0))
    monkeypatch.setattr(JobManager, "poll", JobManager.jobs)  # the queued job is not started here
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert not at.exception
    _by_label(at.button, "Clear finished jobs").click().run()
    assert not at.exception
    assert [j.id for j in jobs.jobs()] == ["next"]
