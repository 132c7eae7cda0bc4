"""`ulviz demo` end to end (short), and the bundled demo files themselves."""
import numpy as np
import pytest

from conftest import ROOT
from ulviz import open_run
from ulviz.store import list_landscapes
from ulviz.cli import main
from ulviz.demo import DEMO_METHODS


def test_demo_pipeline_end_to_end(tmp_path, capsys):
    # the model-free methods: the optimised ones (em) take minutes on a CPU and are cached in the bundle
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--methods", "random,lsp,ops"]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out
    for name in ["clean", "random", "lsp", "ops"]:
        run = open_run(tmp_path / f"{name}.h5")
        assert run.status == "complete" and list(run.sal_epochs) == [1, 2]
        assert np.isfinite(run.sal["sal"]).all()
        kinds = {s["kind"] for s in list_landscapes(run.path) if s["complete"] == 1.0}
        assert {"plane", "pca", "line"} <= kinds
    assert main(["demo", "--methods", "nope"]) == 2


def test_bundled_demo_is_complete():
    demo = ROOT / "data" / "demo"
    if not demo.exists():
        pytest.skip("no bundled demo")
    for name in DEMO_METHODS:
        run = open_run(demo / f"{name}.h5")
        assert run.status == "complete" and run.epochs_done == 30
        assert list(run.sal_epochs) == list(range(1, 31)) and run.sal_settings["estimator"] == "exact"
    clean = open_run(demo / "clean.h5")
    assert clean.metrics["test_acc"].iloc[-1] >= 0.95
