"""The landscape page and its cache: nothing expensive starts unasked, and browsing never writes
into run files (the bundled demo stays read-only); computed landscapes go to the data directory's
cache."""
import hashlib
from dataclasses import replace

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import ROOT, tiny_config
from ulviz import open_run, train
from ulviz.measure.landscape.runs import cached_landscapes, run_landscape
from ulviz.store.caches import landscape_cache_path
from ulviz.store.runs import find_runs


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("land")
    cfg = replace(tiny_config(epochs=2), name="clean")
    train(cfg, d / "clean.h5")
    train(replace(cfg, name="noise", poison=replace(cfg.poison, method="random")), d / "noise.h5")
    return d


def test_cache_file_leaves_the_run_file_untouched(study, tmp_path):
    run = open_run(study / "clean.h5")
    before = _digest(run.path)
    cache = landscape_cache_path(tmp_path, run)
    assert cache.parent == tmp_path / ".cache" / "landscapes"
    assert run_landscape(run.path, "line", resolution=9, cache_file=cache, compute=False) is None
    land = run_landscape(run.path, "line", resolution=9, cache_file=cache)
    assert _digest(run.path) == before and cache.exists()
    again = run_landscape(run.path, "line", resolution=9, cache_file=cache, compute=False)
    np.testing.assert_array_equal(again.loss, land.loss)
    # the same numbers as a landscape computed without any cache
    fresh = run_landscape(run.path, "line", resolution=9, cache=False)
    np.testing.assert_allclose(fresh.loss, land.loss, rtol=1e-6)
    assert [s["kind"] for s in cached_landscapes(run.path, cache)] == ["line"]
    # cache files are not run files, even in the data directory itself
    assert find_runs(tmp_path) == []


def test_a_damaged_cache_is_recomputed_not_an_error(study, tmp_path):
    run = open_run(study / "clean.h5")
    cache = landscape_cache_path(tmp_path, run)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"garbage")
    land = run_landscape(run.path, "line", resolution=5, cache_file=cache)
    assert np.isfinite(land.loss).all()
    assert run_landscape(run.path, "line", resolution=5, cache_file=cache, compute=False) is not None


def test_find_runs_skips_hidden_folders(tmp_path, study):
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "test.h5").write_bytes((study / "clean.h5").read_bytes())
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a.h5").write_bytes((study / "clean.h5").read_bytes())
    assert find_runs(tmp_path) == [tmp_path / "runs" / "a.h5"]


def test_landscape_page_computes_only_on_request_and_writes_only_the_cache(study, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    for f in ("clean.h5", "noise.h5"):
        (data / f).write_bytes((study / f).read_bytes())
    digests = {f: _digest(data / f) for f in ("clean.h5", "noise.h5")}
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(data))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "pages/1_Loss_landscape.py"), default_timeout=120).run()
    assert not at.exception
    assert not at.get("plotly_chart")  # nothing cached: nothing computed unasked
    info = " ".join(i.value for i in at.info)
    assert "Not cached yet" in info and "points" in info and "samples" in info
    button = next(b for b in at.button if b.label.startswith("Compute"))
    at = button.click().run()
    assert not at.exception and len(at.get("plotly_chart")) == 2  # contours + the 3-D surface
    assert {f: _digest(data / f) for f in digests} == digests  # run files unchanged
    assert len(list((data / ".cache" / "landscapes").iterdir())) == 2
    # a fresh session finds them cached: charts at once, no button
    at = AppTest.from_file(str(ROOT / "pages/1_Loss_landscape.py"), default_timeout=120).run()
    assert not at.exception and len(at.get("plotly_chart")) == 2
    assert not [b for b in at.button if b.label.startswith("Compute")]
