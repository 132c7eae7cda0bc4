"""Sweeps: expansion of a sweep file, skip/resume/retry, the local executor, a killed worker, Ray."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from ulviz import open_run, train
from ulviz.core.errors import UlvizError
from ulviz.studies.sweep import load_sweep, parse_sweep, run_sweep, run_state, sweep_ud, todo

SWEEP = """
out = "runs/study"
[base]
data = { name = "synthetic" }
model = { name = "mlp", width = 16 }
train = { epochs = 2, batch_size = 32, lr = 0.1, device = "cpu" }
sal = { estimator = "fast", subset = 64 }
[axes]
"poison.method" = ["clean", "random"]
"train.seed" = [0, 1]
"""


def _sweep(tmp_path, text=SWEEP):
    f = tmp_path / "sweep.toml"
    f.write_text(text)
    return load_sweep(f)


def test_expansion_names_count_and_dotted_fields(tmp_path):
    s = _sweep(tmp_path)
    assert [r.name for r in s.runs] == ["method-clean_seed-0", "method-clean_seed-1",
                                        "method-random_seed-0", "method-random_seed-1"]
    assert s.out == (tmp_path / "runs" / "study").resolve() and s.runs[3].path == s.out / "method-random_seed-1.h5"
    r = s.runs[3]
    assert r.config.poison.method == "random" and r.config.train.seed == 1 and r.config.name == r.name
    assert r.config.train.epochs == 2 and r.config.model.width == 16  # the base is kept
    deep = _sweep(tmp_path, SWEEP.replace('"train.seed" = [0, 1]', '"poison.params.eps" = [0.1, 0.25]\n"poison.seed" = [3]')
                  .replace('["clean", "random"]', '["em", "random"]')
                  .replace('data = { name = "synthetic" }', 'data = { name = "npz", data_dir = "d/x.npz" }'))
    assert deep.runs[1].config.poison.params == {"eps": 0.25} and deep.runs[1].config.poison.seed == 3
    assert [r.name for r in deep.runs][:2] == ["method-em_eps-0.1_seed-3", "method-em_eps-0.25_seed-3"]
    assert deep.runs[0].config.data.data_dir == str((tmp_path / "d" / "x.npz").resolve())  # relative to the file
    # two axes ending in the same word are told apart by their whole field
    both = _sweep(tmp_path, SWEEP.replace('"train.seed" = [0, 1]', '"train.seed" = [0]\n"poison.seed" = [0]'))
    assert both.runs[0].name == "method-clean_train.seed-0_poison.seed-0"
    # a named recipe gives its fields first, the file's own fields win
    paper = _sweep(tmp_path, SWEEP.replace('data = { name = "synthetic" }', 'data = { name = "cifar10" }')
                   .replace('train = { epochs = 2, batch_size = 32, lr = 0.1, device = "cpu" }',
                            'train = { recipe = "paper", epochs = 2, lr = 0.05 }'))
    t = paper.runs[0].config.train
    assert (t.recipe, t.lr, t.epochs, t.batch_size, t.augment) == ("paper", 0.05, 2, 128, "crop_flip")
    # the same file expands the same way every time
    assert [r.name for r in _sweep(tmp_path).runs] == [r.name for r in s.runs]


def test_a_parameter_axis_skips_the_methods_that_do_not_take_it(tmp_path):
    """clean x em x eps x seed: one clean run per seed, the clean twin of every em run (UD needs
    it), instead of a clean run per eps that could not start."""
    from ulviz.measure.seeds import clean_twin_key
    s = _sweep(tmp_path, SWEEP.replace('"poison.method" = ["clean", "random"]',
                                       '"poison.method" = ["clean", "random", "ops"]\n"poison.params.eps" = [0.01, 0.02]'))
    names = [r.name for r in s.runs]
    assert names == ["method-clean_seed-0", "method-clean_seed-1",
                     "method-random_eps-0.01_seed-0", "method-random_eps-0.01_seed-1",
                     "method-random_eps-0.02_seed-0", "method-random_eps-0.02_seed-1",
                     "method-ops_seed-0", "method-ops_seed-1"]
    by = {r.name: r.config for r in s.runs}
    assert by["method-clean_seed-0"].poison.params == {} and by["method-ops_seed-1"].poison.params == {}
    assert by["method-random_eps-0.02_seed-1"].poison.params == {"eps": 0.02}
    for name, config in by.items():  # every protected run finds its clean twin of the same seed
        twin = by[f"method-clean_seed-{config.train.seed}"]
        assert clean_twin_key(config) == clean_twin_key(twin), name


@pytest.mark.parametrize("text, message", [
    ("out = 'x'\n[axes]\n'poison.methd' = ['clean']", "unknown field"),
    ("out = 'x'\n[axes]\n'poison.method' = []", "non-empty list"),
    ("out = 'x'\n[axes]\n'poison.method' = ['em', 'em']", "repeats"),
    ("out = 'x'\n[axes]\n'colour' = ['red']", "starts with one of"),
    ("[axes]\n'poison.method' = ['em']", "needs out"),
    ("out = 'x'\n[axis]", "unknown top-level"),
    ("out = 'x\n", "not valid TOML"),
    ("out = 'x'\n[axes]\n'name' = ['a b', 'a-b']", "same name"),
    # registry names and parameters are checked at plan time, not when a run starts
    ("out = 'x'\n[axes]\n'model.name' = ['lenet5', 'resnet99']", "run name-resnet99: unknown model 'resnet99'"),
    ("out = 'x'\n[base]\npoison = { method = { a = 1 } }\n[axes]\n'train.seed' = [0]",
     "run seed-0: unknown unlearnable method"),
    # a parameter no method of the grid takes is a typo, not something to drop
    ("out = 'x'\n[axes]\n'poison.method' = ['clean', 'em']\n'poison.params.esp' = [0.1]",
     "run method-clean_esp-0.1: method 'clean' does not take esp; it takes no parameters"),
    ("out = 'x'\n[base]\npoison = { method = 'em' }\n[axes]\n'poison.params.eps' = [0.1, 'abc']",
     "run eps-abc: method 'em': eps must be a number"),
    ("out = 'x'\n[axes]\n'train.defenses' = [[{ name = 'cutout', params = { width = 4 } }]]",
     "defense 'cutout' does not take width"),
])
def test_bad_sweep_files_are_named_clearly(tmp_path, text, message):
    with pytest.raises(UlvizError, match=message) as e:
        parse_sweep(text, tmp_path / "s.toml")
    assert str(tmp_path / "s.toml") in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UlvizError, match="cannot read"):
        load_sweep(tmp_path / "missing.toml")


def _stop_after_first_epoch(error):
    def cb(ctx):
        if ctx.epoch == 1:
            raise error
    return cb


def test_skip_resume_and_retry(tmp_path):
    s = _sweep(tmp_path)
    done, cancelled, failed, pending = s.runs
    s.out.mkdir(parents=True)  # the sweep makes it; here the runs are trained by hand
    train(done.config, done.path)
    with pytest.raises(KeyboardInterrupt):
        train(cancelled.config, cancelled.path, callbacks=[_stop_after_first_epoch(KeyboardInterrupt())])
    with pytest.raises(RuntimeError):
        train(failed.config, failed.path, callbacks=[_stop_after_first_epoch(RuntimeError("boom"))])
    assert [run_state(r)[0] for r in s.runs] == ["complete", "interrupted", "failed", "pending"]
    assert run_state(cancelled) == ("interrupted", 1)
    assert [(r.name, resume) for r, resume in todo(s)] == [(cancelled.name, True), (pending.name, False)]
    assert [(r.name, resume) for r, resume in todo(s, retry_failed=True)] == [
        (cancelled.name, True), (failed.name, False), (pending.name, False)]
    # a file from another config is refused, not overwritten
    other = tiny_config(epochs=1)
    train(other, pending.path, overwrite=True)
    with pytest.raises(UlvizError, match="another config"):
        todo(s)


def test_local_sweep_in_parallel_then_rerun_is_a_no_op(tmp_path):
    s = _sweep(tmp_path)
    said = []
    rows = run_sweep(s, "local", parallel=2, say=said.append, poll_s=0.2)
    assert [r["state"] for r in rows] == ["complete"] * 4, said
    assert json.loads((s.out / "sweep-plan.json").read_text())["runs"][3]["name"] == "method-random_seed-1"
    for run in s.runs:  # each equals the same config trained here, in-process
        ref = train(run.config, None).model.state_dict()
        got = open_run(run.path).snapshot(-1)
        assert all(torch_equal(got[k], ref[k]) for k in ref)
    again = []
    run_sweep(s, "local", parallel=2, say=again.append, poll_s=0.2)
    assert not any(line.startswith(("start", "resume")) for line in again), again
    table, summary = sweep_ud(s)
    assert list(table["reference"]) == ["method-clean_seed-0", "method-clean_seed-1"] * 2
    assert np.allclose(table[table.method == "clean"]["UD"], 1.0)
    rand = table[table.method == "random"]
    row = summary[summary.method == "random"].iloc[0]
    assert row.seeds == 2 and row.variant == "method-random" and row.UD_mean == pytest.approx(rand["UD"].mean())
    assert row.UD_std == pytest.approx(rand["UD"].std()) and row.acc_last_std == pytest.approx(rand["acc_last"].std())


def torch_equal(a, b):
    import torch
    return torch.equal(a, b)


def test_cli_status_and_dry_run(tmp_path, capsys):
    from ulviz.cli import main
    f = tmp_path / "sweep.toml"
    f.write_text(SWEEP)
    assert main(["sweep", str(f), "--dry-run"]) == 0
    assert "4 runs into" in capsys.readouterr().out
    assert main(["sweep", str(f), "--status"]) == 0
    out = capsys.readouterr().out
    assert "method-random_seed-1" in out and "4 runs: 0 complete, 0 running, 0 failed, 4 to do" in out
    assert main(["sweep", str(tmp_path / "nope.toml")]) == 2


def test_a_worker_killed_mid_run_loses_only_that_run_s_unfinished_epoch(tmp_path):
    text = SWEEP.replace("epochs = 2", "epochs = 25").replace('"train.seed" = [0, 1]', '"train.seed" = [0]') \
        .replace('sal = { estimator = "fast", subset = 64 }', "").replace("width = 16", "width = 128")
    s = _sweep(tmp_path, text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, "-m", "ulviz.cli", "sweep", str(s.file)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = s.runs[0]
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first run to be a few epochs in
        if victim.path.exists() and run_state(victim)[1] >= 3 and run_state(victim)[0] == "running":
            break
        time.sleep(0.1)
    else:
        driver.kill()
        pytest.fail("the first run never got going")
    import h5py
    with h5py.File(victim.path, "r", swmr=True, locking=False) as f:
        pid = int(f.attrs["writer_pid"])
    os.kill(pid, signal.SIGKILL)
    out, _ = driver.communicate(timeout=300)
    assert "exit code -9" in out
    state, kept = run_state(victim)
    assert state == "interrupted" and 3 <= kept < 25
    said = []
    rows = run_sweep(s, "local", say=said.append, poll_s=0.2)
    assert [r["state"] for r in rows] == ["complete", "complete"] and f"resume {victim.name}" in said, said
    ref = train(victim.config, None).model.state_dict()  # uninterrupted
    got = open_run(victim.path).snapshot(-1)
    assert all(torch_equal(got[k], ref[k]) for k in ref)
    assert len(open_run(victim.path).metrics) == 26  # epoch 0 and every epoch once


def test_the_same_sweep_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray")
    s = _sweep(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        said = []
        rows = run_sweep(s, "ray", say=said.append, poll_s=0.5)
    finally:
        ray.shutdown()
    assert [r["state"] for r in rows] == ["complete"] * 4, said
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray task of num_cpus=1 runs torch on one thread; the sums' order follows it
    try:
        for run in s.runs:
            ref = train(run.config, None).model.state_dict()
            got = open_run(run.path).snapshot(-1)
            assert all(torch_equal(got[k], ref[k]) for k in ref)
    finally:
        torch.set_num_threads(threads)
    assert len(sweep_ud(s)[0]) == 4


def test_missing_ray_is_one_clear_line(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(UlvizError, match=r"pip install -e '\.\[ray\]'"):
        run_sweep(_sweep(tmp_path), "ray", say=lambda t: None)


def test_dashboard_launches_a_sweep_shows_it_as_one_job_and_groups_seeds(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from ulviz.app.jobs import JobManager
    data = tmp_path / "data"
    monkeypatch.setenv("ULVIZ_DATA_DIR", str(data))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    text = SWEEP.replace('out = "runs/study"', 'out = "../../outside"')
    at.text_area(key="sweep_text").set_value(text)
    next(b for b in at.button if b.label == "Launch the sweep").click().run()
    assert any("outside the data directory" in e.value for e in at.error)  # refused, nothing written
    assert not (data / "sweeps").exists() or not list((data / "sweeps").iterdir())
    at.text_area(key="sweep_text").set_value(SWEEP.replace('out = "runs/study"', 'out = "../runs/study"'))
    next(b for b in at.button if b.label == "Launch the sweep").click().run()
    assert not at.exception and any("launched the sweep my-sweep (4 runs" in s.value for s in at.success), \
        [e.value for e in at.error]
    job = JobManager(data).jobs()[0]
    assert job.kind == "sweep" and (data / "sweeps" / "my-sweep.toml").read_text().startswith('\nout = "../runs/study"')
    deadline = time.time() + 300
    while time.time() < deadline and job.alive():
        time.sleep(0.5)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    md = [m.value for m in at.markdown]
    assert any("my-sweep** · sweep of 4 runs" in m for m in md), md  # one row for the whole sweep
    assert sum("· random ·" in m or "· clean ·" in m for m in md) == 0  # not one row per run
    assert len(list((data / "runs" / "study").glob("*.h5"))) == 4
    ud = AppTest.from_file(str(ROOT / "pages/4_Unlearnable_Distance.py"), default_timeout=120).run()
    assert not ud.exception and any(h.value == "Over seeds" for h in ud.subheader)
    summary = ud.dataframe[-1].value
    row = summary[summary.variant == "method-random"].iloc[0]
    assert row.seeds == 2 and "[" in row.acc_last  # mean [95% interval] over the two seeds
