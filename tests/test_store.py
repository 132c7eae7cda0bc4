import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_config
from ulviz import DataConfig, ModelConfig, RunConfig, RunFileError, TrainConfig, open_run, train
from ulviz.store.files import open_for_update


def test_round_trip_every_array(tmp_path):
    cfg = RunConfig(name="rt", data=DataConfig("synthetic"), model=ModelConfig("cnn", width=4),
                    train=TrainConfig(epochs=3, device="cpu"))
    states = []
    result = train(cfg, tmp_path / "rt.h5", callbacks=[lambda c: states.append({k: v.clone() for k, v in c.model.state_dict().items()})])
    run = open_run(tmp_path / "rt.h5")
    assert run.config == cfg and run.status == "complete" and run.epochs_done == 3
    for k in run.metrics:  # float64 in, float64 out: bit-exact (NaN lr of epoch 0 included)
        np.testing.assert_array_equal(run.metrics[k].to_numpy(), [h[k] for h in result.history])
    assert run.tensor_names == list(states[0])
    assert "bn1.running_mean" in run.tensor_names and "bn1.running_mean" not in run.param_names
    assert run.layer_names == ["conv1.weight", "conv2.weight", "conv3.weight", "fc.weight"]
    for epoch, state in enumerate(states):
        snap = run.snapshot(epoch)
        for k, v in state.items():
            assert torch.equal(snap[k], v), (epoch, k)
    path = run.weights_path("conv1.weight")
    assert path.shape == (4, 4, 1, 3, 3) and np.array_equal(path[-1], states[-1]["conv1.weight"].numpy())
    with pytest.raises(RunFileError, match="epoch 9"):
        run.snapshot(9)


def test_refuses_to_overwrite(tmp_path):
    train(tiny_config(epochs=1), tmp_path / "r.h5")
    with pytest.raises(RunFileError, match="already exists"):
        train(tiny_config(epochs=1), tmp_path / "r.h5")
    assert open_run(tmp_path / "r.h5").status == "complete"


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from ulviz.training import loop as T  # (ulviz.train, the attribute, is the train function)
    from conftest import tiny_config
    kill_at, calls = int(sys.argv[2]), [0]
    real_step = T.torch.optim.SGD.step
    def step(self, *a, **k):
        # SIGKILL in the middle of epoch kill_at+1, after a few optimizer steps
        calls[0] += 1
        if calls[0] == kill_at * 10 + 4:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, *a, **k)
    T.torch.optim.SGD.step = step
    T.train(tiny_config(epochs=6, batch_size=60), sys.argv[1])
""")


@pytest.mark.parametrize("kill_at", [0, 2, 4])
def test_run_killed_mid_epoch_keeps_finished_epochs(tmp_path, kill_at):
    ref = tmp_path / "ref.h5"
    train(tiny_config(epochs=6, batch_size=60), ref)  # 600 samples / 60 = 10 steps per epoch
    path = tmp_path / "killed.h5"
    script = KILL_SCRIPT.format(tests=str(ROOT / "tests"))
    proc = subprocess.run([sys.executable, "-c", script, str(path), str(kill_at)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    run, full = open_run(path), open_run(ref)
    assert run.status == "interrupted" and run.epochs_done == kill_at
    assert np.allclose(run.metrics.drop(columns="seconds"), full.metrics.drop(columns="seconds")[: kill_at + 1], equal_nan=True)
    last = run.snapshot(-1)
    assert all(torch.equal(last[k], v) for k, v in full.snapshot(kill_at).items())
    # the file can be updated afterwards: it is rewritten without losing anything
    with open_for_update(path) as f:
        f.attrs["touched"] = 1
    again = open_run(path)
    assert again.status == "interrupted" and again.epochs_done == kill_at
    assert all(torch.equal(again.snapshot(-1)[k], v) for k, v in last.items())


def test_foreign_and_corrupt_files(tmp_path):
    with pytest.raises(RunFileError, match="no such file"):
        open_run(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(RunFileError, match="not an HDF5 file"):
        open_run(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(RunFileError, match="another program"):
        open_run(foreign)
    good = tmp_path / "good.h5"
    train(tiny_config(epochs=1), good)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(RunFileError, match="truncated.h5"):
        open_run(truncated)
    with h5py.File(good, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(RunFileError, match="newer"):
        open_run(good)
    with h5py.File(good, "a") as f:
        f.attrs["schema_version"] = 1
        del f["metrics/test_acc"]
    with pytest.raises(RunFileError, match="metrics/test_acc"):
        open_run(good)


def test_config_json_is_strict():
    cfg = tiny_config()
    assert RunConfig.from_json(cfg.to_json()) == cfg
    d = json.loads(cfg.to_json())
    d["train"]["lrr"] = 1
    from ulviz import UlvizError
    with pytest.raises(UlvizError, match="lrr"):
        RunConfig.from_dict(d)


def _hold_open(path, mode: str, seconds: float) -> subprocess.Popen:
    """Another process holding `path` open (and so HDF5's lock on it) for `seconds`; returns
    once it has the file."""
    code = textwrap.dedent(f"""
        import sys, time, h5py
        f = h5py.File({str(path)!r}, {mode!r})
        print("open", flush=True)
        time.sleep({seconds})
        f.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_a_reader_in_another_process_does_not_make_a_writer_fail(tmp_path):
    """A plain HDF5 reader holds a shared lock, a writer an exclusive one. The dashboard or a sweep
    polling a run while a resume, a post-hoc SAL row or a landscape cache opens it for writing
    used to make that write fail ("unable to lock file"), and a landscape cache was deleted."""
    from ulviz.store.caches import read_landscape, write_landscape_points
    path = tmp_path / "r.h5"
    train(tiny_config(epochs=1), path)
    reader = _hold_open(path, "r", 1.0)
    with open_for_update(path) as f:  # waits for the reader instead of failing
        f.attrs["touched"] = 1
    assert reader.wait(timeout=30) == 0
    writer = _hold_open(path, "a", 1.0)
    run = open_run(path)  # a reader waits for a writer too, rather than calling the file corrupt
    assert run.status == "complete" and writer.wait(timeout=30) == 0
    cache = tmp_path / "c.landscapes"
    settings = {"kind": "line"}
    write_landscape_points(cache, settings, [np.arange(3.0)], np.array([0]), np.array([1.0]), np.array([0.5]))
    reader = _hold_open(cache, "r", 1.0)
    write_landscape_points(cache, settings, [np.arange(3.0)], np.array([2]), np.array([3.0]), np.array([0.7]))
    assert reader.wait(timeout=30) == 0
    got = read_landscape(cache, settings)
    assert got["done"].tolist() == [True, False, True] and got["loss"][[0, 2]].tolist() == [1.0, 3.0]
