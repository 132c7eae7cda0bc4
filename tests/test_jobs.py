"""Managing runs and jobs: clearing finished jobs, deleting and renaming run files (with their
refusals), one labelling rule, reading a run file named by the user, the launch form's config."""
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import tiny_config
from ulviz import open_run, train
from ulviz.app.jobs import Job, JobManager, launch_config, read_run_source
from ulviz.core.errors import UlvizError
from ulviz.store.runs import RunWriter, run_labels, rename_run
from ulviz.studies.demo import DEMO_DIR


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "clean.h5"
    train(replace(tiny_config(epochs=1), name="clean"), path)
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: its pid names no process now
    return proc.pid


def _record(jobs: JobManager, job_id: str, state: str, pid: int, out: str = "x.h5") -> Job:
    jobs.dir.mkdir(parents=True, exist_ok=True)
    job = Job(job_id, job_id, str(jobs.data_dir / "runs" / out), str(jobs.dir / f"{job_id}.log"), {}, state, pid,
              created=float(len(jobs.jobs())))
    jobs._save(job)
    (jobs.dir / f"{job_id}.config.json").write_text("{}")
    (jobs.dir / f"{job_id}.log").write_text("log")
    return job


def test_clear_finished_keeps_queued_and_running_jobs(tmp_path):
    jobs = JobManager(tmp_path)
    _record(jobs, "done", "started", _dead_pid())
    _record(jobs, "cancelled", "cancelled", _dead_pid())
    _record(jobs, "waiting", "queued", 0)
    _record(jobs, "running", "started", os.getpid())  # this process: alive
    assert jobs.clear_finished() == 2
    assert [j.id for j in jobs.jobs()] == ["waiting", "running"]
    left = sorted(p.name for p in jobs.dir.iterdir())
    assert left == sorted(f"{i}{s}" for i in ("waiting", "running") for s in (".json", ".config.json", ".log"))
    assert jobs.clear_finished() == 0


def test_delete_run_refusals_and_success(tmp_path, tiny_run, monkeypatch):
    runs = tmp_path / "runs"
    runs.mkdir()
    target = runs / "mine.h5"
    target.write_bytes(tiny_run.read_bytes())
    jobs = JobManager(tmp_path)
    with pytest.raises(UlvizError, match="bundled demo"):  # the real bundle, by a path that need not exist
        JobManager(DEMO_DIR.parent).delete_run(DEMO_DIR / "no-such-run-xyz.h5")
    bundle = tmp_path / "demo"
    bundle.mkdir()
    (bundle / "clean.h5").write_bytes(tiny_run.read_bytes())
    monkeypatch.setattr("ulviz.studies.demo.DEMO_DIR", bundle)
    with pytest.raises(UlvizError, match="bundled demo"):
        jobs.delete_run(bundle / "clean.h5")
    assert (bundle / "clean.h5").exists()
    with pytest.raises(UlvizError, match="outside the data directory"):
        jobs.delete_run(tiny_run)
    _record(jobs, "writer", "queued", 0, out="mine.h5")
    with pytest.raises(UlvizError, match="queued or running"):
        jobs.delete_run(target)
    assert target.exists()
    jobs.cancel("writer")  # now a finished record: deleting the file forgets it, freeing the name
    _record(jobs, "other", "started", _dead_pid(), out="other.h5")
    assert jobs.delete_run(target) == target.resolve()
    assert not target.exists() and [j.id for j in jobs.jobs()] == ["other"]
    (runs / "junk.h5").write_bytes(b"not hdf5")  # an unreadable file may be deleted too
    jobs.delete_run(runs / "junk.h5")
    assert not (runs / "junk.h5").exists()


def test_rename_changes_only_the_stored_name(tmp_path, tiny_run):
    path = tmp_path / "r.h5"
    path.write_bytes(tiny_run.read_bytes())
    before = open_run(path)
    config = rename_run(path, "  clean, lr 0.1  ")
    after = open_run(path)
    assert after.name == config.name == "clean, lr 0.1"
    assert replace(after.config, name=before.name) == before.config
    assert after.metrics.equals(before.metrics) and after.status == before.status
    for name in before.tensor_names:
        np.testing.assert_array_equal(after.snapshot(-1)[name], before.snapshot(-1)[name])
    with pytest.raises(UlvizError, match="empty"):
        rename_run(path, "   ")
    assert JobManager(tmp_path).rename_run(path, "again").name == "again" == open_run(path).name


def test_rename_refuses_a_file_being_written(tmp_path):
    cfg = tiny_config()
    path = tmp_path / "live.h5"
    writer = RunWriter.create(path, cfg, {"w": torch.zeros(2)}, ["w"], ["w"])  # this process writes it
    try:
        with pytest.raises(UlvizError, match="still being written"):
            rename_run(path, "other")
        with pytest.raises(UlvizError, match="still being written"):
            JobManager(tmp_path).delete_run(path)
    finally:
        writer.close()
    assert path.exists()


def test_run_labels_name_the_file_only_when_names_collide(tmp_path, tiny_run):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for p in (tmp_path / "a" / "clean.h5", tmp_path / "b" / "clean.h5", tmp_path / "a" / "other.h5"):
        p.write_bytes(tiny_run.read_bytes())
    rename_run(tmp_path / "a" / "other.h5", "em")
    runs = [open_run(tmp_path / "a" / "clean.h5"), open_run(tmp_path / "b" / "clean.h5"),
            open_run(tmp_path / "a" / "other.h5")]
    assert run_labels(runs) == ["clean (a/clean.h5)", "clean (b/clean.h5)", "em"]
    assert run_labels([("clean", "x/one.h5"), ("clean", "x/two.h5"), ("ops", "x/ops.h5")]) == \
        ["clean (one.h5)", "clean (two.h5)", "ops"]
    (tmp_path / "bad.h5").write_bytes(b"junk")
    assert run_labels([tmp_path / "a" / "other.h5", tmp_path / "bad.h5"]) == ["em", "bad"]
    assert len(set(run_labels(runs))) == len(runs)


def test_read_run_source_explains_directories(tmp_path, tiny_run):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "one.h5").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UlvizError, match=r"is a directory, not a run file; it holds one\.h5"):
        read_run_source(tmp_path / "full")
    with pytest.raises(UlvizError, match="is a directory, not a run file; it holds no .h5 file"):
        read_run_source(tmp_path / "empty")
    with pytest.raises(UlvizError, match="no such file"):
        read_run_source(tmp_path / "missing.h5")
    assert read_run_source(tiny_run) == ("clean.h5", tiny_run.read_bytes())


def test_launch_config_applies_the_recipe_and_checks_the_dataset_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar").mkdir()
    c = launch_config("my run", "cifar10", "cnn", "random", params_text="mode=class", dataset_dir="cifar",
                      recipe=None, lr=0.02, train_limit=500, sal="exact")
    assert c.name == "my-run" and c.data.data_dir == str(tmp_path / "cifar") and c.data.train_limit == 500
    # cifar10's default recipe is `paper` (batch 128, crop + flip), the lr given overrides its 0.1
    assert (c.train.recipe, c.train.lr, c.train.batch_size, c.train.augment) == ("paper", 0.02, 128, "crop_flip")
    assert c.poison.params == {"mode": "class"} and c.sal.estimator == "exact"
    q = launch_config("q", "digits", "lenet5", "clean", recipe="quick", batch_size=16, augment="crop")
    assert (q.train.recipe, q.train.lr, q.train.batch_size, q.train.augment, q.data.data_dir) == \
        ("quick", 0.05, 16, "crop", None)
    with pytest.raises(UlvizError, match="local files"):
        launch_config("x", "mnist", "lenet5", "clean")
    with pytest.raises(UlvizError, match="no such directory"):
        launch_config("x", "mnist", "lenet5", "clean", dataset_dir="nowhere")
    with pytest.raises(UlvizError, match="does not take"):
        launch_config("x", "digits", "lenet5", "random", params_text="bogus=1")
    with pytest.raises(UlvizError, match="method 'random': eps must be a number, got '8/255'"):
        launch_config("x", "digits", "lenet5", "random", params_text="eps=8/255")


def test_a_first_digits_job_from_the_form_learns_within_3_epochs():
    """The home form's defaults (digits, lenet5, recipe quick, lr box 0): a 3-epoch job used to end
    at test accuracy 0.075, below chance, on the loss plateau of PyTorch's default init."""
    import torch
    from ulviz import create_model, train
    from ulviz.app.jobs import launch_config
    config = launch_config("first", "digits", "lenet5", "clean", epochs=3, lr=None, batch_size=None)
    assert config.train.recipe == "quick" and config.train.lr == 0.05
    history = train(config, None).history
    assert history[0]["test_acc"] < 0.3 < 0.8 < history[-1]["test_acc"], [h["test_acc"] for h in history]
    # He init: each weight's std is sqrt(2 / fan_in), biases zero
    torch.manual_seed(0)
    net = create_model("lenet5", in_shape=(1, 8, 8), num_classes=10)
    for layer in (net.conv2, net.fc1):
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
        assert torch.all(layer.bias == 0)
