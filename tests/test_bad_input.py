"""Every numeric option of train, poison, sal, landscape, sweep and demo, given a value out of its
range, a non-number or a non-finite number: one line on stderr, exit 2, no file written. The
property is checked over the option space by hypothesis; the ranges below are written out here
independently of the code's (a field's limits in ulviz.core.config, the CLI's own counts)."""
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_config
from ulviz import train
from ulviz.cli import main
from ulviz.core.config import RunConfig, SALConfig, TrainConfig, check_numbers

INT, FLOAT = "int", "float"
# (command, option, kind, lowest valid value, whether the lowest is allowed, highest valid or None)
OPTIONS = [
    ("train", "--epochs", INT, 1, True, None), ("train", "--batch-size", INT, 1, True, None),
    ("train", "--lr", FLOAT, 0, False, None), ("train", "--momentum", FLOAT, 0, True, "<1"),
    ("train", "--weight-decay", FLOAT, 0, True, None), ("train", "--seed", INT, 0, True, None),
    ("train", "--train-limit", INT, 1, True, None), ("train", "--test-limit", INT, 1, True, None),
    ("train", "--width", INT, 1, True, None), ("train", "--poison-ratio", FLOAT, 0, False, 1),
    ("train", "--poison-seed", INT, 0, True, None), ("train", "--sal-iters", INT, 1, True, None),
    ("train", "--sal-lr-min", FLOAT, 0, False, None), ("train", "--sal-lr-max", FLOAT, 0, False, None),
    ("train", "--sal-eps", FLOAT, 0, False, None), ("train", "--sal-batch-size", INT, 1, True, None),
    ("train", "--sal-subset", INT, 1, True, None),
    ("poison", "--ratio", FLOAT, 0, False, 1), ("poison", "--train-limit", INT, 1, True, None),
    ("sal", "--sal-iters", INT, 1, True, None), ("sal", "--sal-eps", FLOAT, 0, False, None),
    ("sal", "--sal-lr-min", FLOAT, 0, False, None), ("sal", "--sal-batch-size", INT, 1, True, None),
    ("sal", "--sal-subset", INT, 1, True, None),
    ("landscape", "--resolution", INT, 2, True, None), ("landscape", "--coarse", INT, 2, True, None),
    ("landscape", "--subset", INT, 1, True, None),
    ("sweep", "--parallel", INT, 1, True, None), ("demo", "--epochs", INT, 1, True, None),
]


def bad_values(kind, low, low_ok, high):
    below = (low - 1 if low_ok else low) if kind == INT else (low - 1e-3 if low_ok else low)
    out = [st.integers(max_value=below).map(str) if kind == INT else
           st.floats(max_value=below, allow_nan=False, allow_infinity=False).map(repr),
           st.sampled_from(["abc", "", "1e", "8/255"])]
    if kind == FLOAT:
        out.append(st.sampled_from(["nan", "inf", "-inf"]))
    else:
        out.append(st.sampled_from(["2.5", "1e3"]))
    if high == "<1":
        out.append(st.floats(min_value=1, allow_nan=False, allow_infinity=False).map(repr))
    elif high is not None:
        out.append(st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False).map(repr))
    return st.one_of(out)


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-input") / "run.h5"
    train(tiny_config(epochs=1), path)
    return path


def _argv(command, option, value, run, out, tmp):
    tail = [option, value] if not value.startswith("-") else [f"{option}={value}"]
    return {"train": ["train", "--dataset", "synthetic", "--out", str(out), *tail],
            "poison": ["poison", "--dataset", "synthetic", "--method", "random", "--out", str(out), *tail],
            "sal": ["sal", str(run), *tail],
            "landscape": ["landscape", str(run), "--csv", str(out), *tail],
            "sweep": ["sweep", str(tmp / "none.toml"), *tail],
            "demo": ["demo", "--out", str(tmp / "demo"), *tail]}[command]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_bad_number_is_one_line_exit_2_and_writes_nothing(data, run_file, tmp_path, capsys):
    command, option, kind, low, low_ok, high = data.draw(st.sampled_from(OPTIONS))
    value = data.draw(bad_values(kind, low, low_ok, high))
    before = run_file.stat().st_mtime_ns, run_file.stat().st_size
    out = tmp_path / "out.h5"
    capsys.readouterr()
    rc = main(_argv(command, option, value, run_file, out, tmp_path))
    err = capsys.readouterr().err
    assert rc == 2, (command, option, value, err)
    assert err.startswith("ulviz: error:") and err.count("\n") == 1, err
    assert not out.exists() and not (tmp_path / "demo").exists()
    assert (run_file.stat().st_mtime_ns, run_file.stat().st_size) == before  # a SAL row was not even started


@settings(max_examples=60, deadline=None)
@given(epochs=st.integers(1, 10**6), lr=st.floats(1e-9, 1e3), momentum=st.floats(0, 0.999),
       iters=st.integers(1, 1000), eps=st.floats(1e-9, 10))
def test_every_value_in_range_passes(epochs, lr, momentum, iters, eps):
    check_numbers(RunConfig(train=TrainConfig(epochs=epochs, lr=lr, momentum=momentum),
                            sal=SALConfig(iters=iters, eps=eps)))


def test_missing_output_directory_is_refused_and_not_created(tmp_path, capsys):
    target = tmp_path / "no-such-dir" / "x.h5"
    assert main(["train", "--dataset", "synthetic", "--epochs", "1", "--out", str(target)]) == 2
    assert "does not exist" in capsys.readouterr().err and not target.parent.exists()


def test_sweep_file_with_negative_epochs_is_refused(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text('out = "runs"\n[base]\ndata = { name = "synthetic" }\ntrain = { epochs = -2 }\n'
                 '[axes]\n"train.seed" = [0, 1]\n')
    assert main(["sweep", str(f)]) == 2
    err = capsys.readouterr().err
    assert "train.epochs must be at least 1, got -2" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*.h5"))


def test_the_form_refuses_out_of_range_numbers():
    from ulviz.app.jobs import launch_config
    from ulviz.core.errors import UlvizError
    with pytest.raises(UlvizError, match="train.epochs"):
        launch_config("x", "digits", "lenet5", "clean", epochs=0)
    with pytest.raises(UlvizError, match="poison.ratio"):
        launch_config("x", "digits", "lenet5", "clean", ratio=0.0)
    with pytest.raises(UlvizError, match="train.lr"):
        launch_config("x", "digits", "lenet5", "clean", lr=-0.1)
