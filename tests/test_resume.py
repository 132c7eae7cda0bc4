"""Kill-safe runs and exact resume; readers beside a writer; fuzzed run files."""
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, tiny_config
from ulviz import SALConfig, open_run, resume, train
from ulviz.cli import main
from ulviz.core.errors import UlvizError

CONFIG = replace(tiny_config(epochs=5, batch_size=60), sal=SALConfig(estimator="exact", iters=2, subset=120))

KILL = textwrap.dedent("""
    import os, signal, sys
    from ulviz import RunConfig
    import ulviz.measure.sal_runs as S  # the training callback calls layer_sal from there
    from ulviz.training import loop as T  # (ulviz.train, the attribute, is the train function)
    where, n, calls = sys.argv[2], int(sys.argv[3]), [0]
    def killer(real):
        def wrapped(*a, **k):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        return wrapped
    if where == "step":  # inside an epoch: the n-th optimizer step (10 per epoch)
        T.torch.optim.SGD.step = killer(T.torch.optim.SGD.step)
    else:  # inside the SAL of an epoch, after its snapshot
        S.layer_sal = killer(S.layer_sal)
    T.train(RunConfig.from_json(sys.argv[4]), sys.argv[1])  # CONFIG, as JSON
""")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "ref.h5"
    train(CONFIG, path)
    return open_run(path)


def _same_run(a, b):
    cols = [c for c in a.metrics.columns if c != "seconds"]
    pd_a, pd_b = a.metrics[cols].to_numpy(), b.metrics[cols].to_numpy()
    assert pd_a.shape == pd_b.shape
    assert np.array_equal(np.nan_to_num(pd_a, nan=-1), np.nan_to_num(pd_b, nan=-1))
    for e in range(len(a.metrics)):
        sa, sb = a.snapshot(e), b.snapshot(e)
        assert all(torch.equal(sa[k], sb[k]) for k in sa), e
    assert np.array_equal(a.sal_epochs, b.sal_epochs)
    for part in a.sal:
        assert np.array_equal(a.sal[part], b.sal[part]), part


@pytest.mark.parametrize("where, n", [("step", 4), ("step", 14), ("step", 34), ("sal", 2), ("sal", 4)])
def test_killed_run_resumes_to_the_uninterrupted_run(tmp_path, reference, where, n):
    path = tmp_path / "killed.h5"
    proc = subprocess.run([sys.executable, "-c", KILL, str(path), where, str(n),
                           CONFIG.to_json()], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    killed = open_run(path)
    assert killed.status == "interrupted" and 0 <= killed.epochs_done < 5
    if where == "sal":  # killed after the epoch's snapshot, before its SAL row
        assert len(killed.sal_epochs) == killed.epochs_done - 1
    assert main(["train", "--resume", str(path), "--quiet"]) == 0
    done = open_run(path)
    assert done.status == "complete"
    _same_run(done, reference)


def test_cli_process_killed_at_any_moment_resumes(tmp_path, reference):
    """A real `ulviz train` process killed by the clock (wherever it happens to be), then resumed."""
    path = tmp_path / "run.h5"
    cmd = [sys.executable, "-m", "ulviz.cli", "train", "--config", str(tmp_path / "c.json"), "--out", str(path), "--quiet"]
    (tmp_path / "c.json").write_text(CONFIG.to_json())
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if open_run(path).epochs_done >= 2:
                break
        except UlvizError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert open_run(path).status in ("interrupted", "complete")
    if open_run(path).status != "complete":
        assert main(["train", "--resume", str(path), "--quiet"]) == 0
    _same_run(open_run(path), reference)


def test_resume_refuses_complete_and_diverged_runs(tmp_path, reference):
    with pytest.raises(UlvizError, match="nothing to resume"):
        resume(reference.path)
    bad = replace(tiny_config(epochs=3), train=replace(tiny_config().train, lr=1e6, epochs=3))
    train(bad, tmp_path / "nan.h5")
    run = open_run(tmp_path / "nan.h5")
    assert run.status == "diverged" and "diverged at epoch" in run.message
    assert main(["train", "--resume", str(tmp_path / "nan.h5")]) == 2


def test_reader_beside_a_writer_sees_a_growing_consistent_file(tmp_path):
    path = tmp_path / "live.h5"
    cfg = replace(tiny_config(epochs=12, batch_size=30), sal=SALConfig(estimator="fast", subset=64))
    (tmp_path / "c.json").write_text(cfg.to_json())
    proc = subprocess.Popen([sys.executable, "-m", "ulviz.cli", "train", "--config", str(tmp_path / "c.json"),
                             "--out", str(path), "--quiet"], cwd=ROOT)
    seen, reads, last = [], 0, -1
    deadline = time.time() + 900  # generous: a loaded 2-core machine runs the 12 epochs slowly
    while time.time() < deadline:
        writer_done = proc.poll() is not None  # read once more after the writer ends
        if not path.exists():
            time.sleep(0.01)
            continue
        try:
            run = open_run(path)
        except UlvizError:  # only while the file is being created, before its layout is written
            assert reads == 0
            continue
        reads += 1
        n = len(run.metrics)
        assert n >= last  # never shrinks
        last = n
        if n:
            snap = run.snapshot(-1)  # every counted epoch has its snapshot
            assert all(torch.isfinite(v.float()).all() for v in snap.values())
        assert len(run.sal_epochs) <= n and list(run.sal_epochs) == list(range(1, len(run.sal_epochs) + 1))
        seen.append(n)  # rows: epoch 0 (the initial model) and every finished epoch
        if run.status == "complete" or writer_done:
            break
    proc.wait(30)
    assert proc.returncode == 0 and seen[-1] == 13 and len(set(seen)) >= 3, (reads, seen[:5])
    print(f"reader: {reads} reads while the writer appended 12 epochs")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_run_files_end_in_our_error_or_open(tmp_path_factory, data):
    src = _fuzz_source(tmp_path_factory)
    raw = bytearray(src.read_bytes())
    kind = data.draw(st.sampled_from(["flip", "truncate", "random", "zero-block"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 50))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "random":
        raw = bytearray(data.draw(st.binary(min_size=0, max_size=4096)))
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i:i + 4096] = bytes(len(raw[i:i + 4096]))
    path = tmp_path_factory.mktemp("fuzz") / "f.h5"
    path.write_bytes(bytes(raw))
    try:
        run = open_run(path)
        run.snapshot(-1)
        run.sal_frame()
    except UlvizError:
        pass
    rc = main(["info", str(path)])
    assert rc in (0, 2)


_SRC = {}


def _fuzz_source(factory):
    if "path" not in _SRC:
        p = factory.mktemp("src") / "src.h5"
        train(replace(tiny_config(epochs=2), sal=SALConfig(estimator="fast", subset=32)), p)
        _SRC["path"] = p
    return _SRC["path"]
