import os
import subprocess
import sys

import pytest

from ulviz import open_run
from ulviz.cli import main


def test_train_then_info(tmp_path, capsys):
    out = tmp_path / "r.h5"
    rc = main(["train", "--dataset", "synthetic", "--model", "linear", "--epochs", "2", "--out", str(out),
               "--device", "cpu", "--quiet", "--poison", "random", "--poison-param", "mode=\"class\""])
    assert rc == 0
    run = open_run(out)
    assert run.config.poison.method == "random" and run.config.poison.params == {"mode": "class"}
    assert run.epochs_done == 2
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "status complete" in text and "test_acc" in text and "1.weight" in text


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"hello")
    proc = subprocess.run([sys.executable, "-m", "ulviz.cli", "info", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "bad.h5" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ulviz.cli", "train", "--dataset", "mnist", "--out",
                           str(tmp_path / "x.h5"), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--data-dir" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists()
    # a parameter of the wrong type: one line before any file is written, not a traceback midway
    for flag, value, message in [("--poison-param", "eps=8/255", "method 'em': eps must be a number, got '8/255'"),
                                 ("--defense", "mixup:alpha=abc", "defense 'mixup': alpha must be a number")]:
        proc = subprocess.run([sys.executable, "-m", "ulviz.cli", "train", "--dataset", "synthetic", "--poison", "em",
                               flag, value, "--out", str(tmp_path / "y.h5"), "--quiet"], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
        assert not (tmp_path / "y.h5").exists()


def test_list_names_the_type_of_parameters_without_a_default(capsys):
    assert main(["list"]) == 0
    assert "pgd_steps=None (int)" in capsys.readouterr().out


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_output_into_a_closed_pipe_is_not_a_traceback(unbuffered):
    """`ulviz list | head -1`: the reader is gone before we write; we stop quietly, whether the
    output is written as printed or buffered to the end."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen([sys.executable, "-m", "ulviz.cli", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the interpreter has even imported torch
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_sal_prints_layers_as_rows_narrow_enough_for_a_terminal(tmp_path, capsys):
    out = tmp_path / "run.h5"
    assert main(["train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "3", "--out", str(out),
                 "--quiet", "--sal", "none"]) == 0
    capsys.readouterr()
    assert main(["sal", str(out), "--estimator", "fast", "--sal-subset", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    run = open_run(out)
    rows = [line for line in lines[1:] if line.split() and line.split()[0] in run.layer_names]
    assert [r.split()[0] for r in rows] == run.layer_names  # one row per layer
    assert all(len(r.split()) == 1 + len(run.sal_epochs) for r in rows)  # one column per epoch
    assert max(len(line) for line in lines[1:]) < 120
