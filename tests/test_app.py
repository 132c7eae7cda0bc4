"""Every page of the dashboard with streamlit's AppTest: on the bundled demo and on runs written here."""
import shutil
import time
from dataclasses import replace

import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config
from ulviz import SALConfig, open_run, train
from ulviz.jobs import UPLOAD_LIMIT, JobManager, add_run_file, inside, safe_name
from ulviz.errors import UlvizError

PAGES = ["pages/1_Loss_landscape.py", "pages/2_SAL.py", "pages/3_Optimization_paths.py",
         "pages/4_Unlearnable_Distance.py"]
DEMO = ROOT / "data" / "demo"


def _app(path, data_dir, monkeypatch):
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(data_dir))
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(str(ROOT / path), default_timeout=180)


def _charts(at):
    return at.get("plotly_chart")


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
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["status"]) == {"complete", "unreadable"}
    assert any("broken.h5" in e.value and "not an HDF5 file" in e.value for e in at.error)
    assert sum("broken.h5" in e.value for e in at.error) == 1
    assert len(_charts(at)) == 1  # accuracy curves of the readable run


def test_home_with_no_runs(tmp_path, monkeypatch):
    at = _app("app.py", tmp_path, monkeypatch).run()
    assert not at.exception and "No run files" in at.info[0].value


@pytest.mark.parametrize("page", ["app.py"] + PAGES)
def test_every_page_on_the_bundled_demo(page, monkeypatch, tmp_path):
    if not (DEMO / "clean.h5").exists():
        pytest.skip("no bundled demo")
    shutil.copytree(DEMO, tmp_path / "demo")  # pages may add caches to the files: not to the bundle
    at = _app(page, tmp_path / "demo", monkeypatch).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(_charts(at)) >= 1
    assert len(at.caption) >= 2  # every figure has its caption


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_runs_written_by_the_test(page, study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(page, tmp_path / "s", monkeypatch).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(_charts(at)) >= 1


def test_landscape_page_widgets_and_line_view(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(PAGES[0], tmp_path / "s", monkeypatch).run()
    assert not at.exception
    assert at.sidebar.multiselect[0].value == ["clean", "random"]  # clean first, by default
    before = len(_charts(at))
    at.sidebar.radio[0].set_value("line").run()
    assert not at.exception and len(_charts(at)) == 2 and before == 2  # contours + surface; loss + accuracy
    at.sidebar.radio[0].set_value("interp").run()
    assert not at.exception and len(_charts(at)) == 2


def test_ud_page_table_and_download(study, monkeypatch, tmp_path):
    shutil.copytree(study, tmp_path / "s")
    at = _app(PAGES[3], tmp_path / "s", monkeypatch).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["run"]) == ["clean", "random"] and table["UD"].iloc[0] == pytest.approx(1.0)
    assert len(at.get("download_button")) == 1


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
    at.button[-1].click().run()
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
    while time.time() < deadline and jobs.get(a.id).alive():
        time.sleep(0.2)
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
