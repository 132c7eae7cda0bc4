"""Tasks (classify, rotation, segment), the linear probe, and UD refusing runs of another task."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_config
from ulviz import DataConfig, ModelConfig, SALConfig, UlvizError, load_dataset, open_run, train
from ulviz.cli import main
from ulviz.data.tasks import foreground_masks, iou, list_tasks, rotate, task_dataset
from ulviz.measure.probe import fit_probe, linear_probe, penultimate_features


def test_registry():
    assert list_tasks() == ["classify", "rotation", "segment"]
    with pytest.raises(UlvizError, match="rotation"):
        task_dataset("nope", None, None)


def test_a_rotated_image_gets_its_rotation_label():
    ds = load_dataset(DataConfig("digits"))
    data = task_dataset("rotation", ds, ds, seed=3)
    assert data.num_classes == 4 and set(data.y_train.tolist()) == {0, 1, 2, 3}
    for i in range(20):  # each training input is its image turned by its label's quarter turns
        k = int(data.y_train[i])
        assert torch.equal(data.x_train[i], torch.rot90(ds.x_train[i], k, dims=(1, 2)))
    # a hand-checked case: a quarter turn counter-clockwise moves the top-right corner to the top-left
    img = torch.zeros(1, 1, 3, 3)
    img[0, 0, 0, 2] = 1.0
    assert rotate(img, torch.tensor([1]))[0, 0, 0, 0] == 1.0
    # the clean test set, every image in all four rotations, labels 0..3 in blocks
    n = len(ds.x_test)
    assert len(data.x_test) == 4 * n and data.y_test.tolist() == [0] * n + [1] * n + [2] * n + [3] * n
    assert torch.equal(data.x_test[2 * n + 5], torch.rot90(ds.x_test[5], 2, dims=(1, 2)))
    # the protection's class labels play no part: the rotations are drawn from the seed alone
    shuffled = replace(ds, y_train=ds.y_train.flip(0))
    assert torch.equal(task_dataset("rotation", shuffled, shuffled, seed=3).y_train, data.y_train)


def test_segment_masks_come_from_the_clean_images_and_iou_by_hand():
    ds = load_dataset(DataConfig("digits"))
    protected = replace(ds, x_train=(ds.x_train + 0.3).clamp(0, 1))  # a protection brightening every pixel
    data = task_dataset("segment", protected, ds)
    assert torch.equal(data.x_train, protected.x_train)  # trained on the protected images
    assert torch.equal(data.y_train, (ds.x_train[:, 0] > 0.5).long())  # masks of the clean ones
    with pytest.raises(UlvizError, match="grayscale"):
        foreground_masks(torch.zeros(2, 3, 4, 4))
    # IoU by hand: prediction {0, 1}, truth {1, 2} on a 1x4 strip -> 1 / 3
    truth = torch.tensor([[[0, 1, 1, 0]]])
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1, 0, :2] = 1.0
    assert iou(logits, truth) == pytest.approx(1 / 3)


def test_training_a_task_end_to_end_and_model_checks(tmp_path, capsys):
    out = tmp_path / "rot.h5"
    assert main(["train", "--dataset", "digits", "--model", "lenet5", "--task", "rotation", "--epochs", "2",
                 "--sal", "fast", "--sal-subset", "100", "--out", str(out), "--quiet"]) == 0
    run = open_run(out)
    assert run.config.train.task == "rotation" and len(run.sal_epochs) == 2
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    assert "task     rotation" in capsys.readouterr().out
    assert main(["train", "--dataset", "digits", "--model", "lenet5", "--task", "segment", "--epochs", "1",
                 "--out", str(tmp_path / "x.h5"), "--quiet"]) == 2
    assert "fully convolutional" in capsys.readouterr().err
    seg = tmp_path / "seg.h5"
    assert main(["train", "--dataset", "digits", "--model", "fcn", "--task", "segment", "--epochs", "2",
                 "--out", str(seg), "--quiet"]) == 0
    m = open_run(seg).metrics
    assert 0 < m["test_loss"].iloc[-1] < m["test_loss"].iloc[0] < 1  # mean per pixel, as the training loss
    assert 0.5 < m["test_acc"].iloc[-1] <= 1  # a fraction of pixels, not a count


def test_probe_separating_features_and_a_network_that_sees_nothing():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (600,), generator=g)
    x = torch.nn.functional.one_hot(y, 5).float() * 3 + 0.5 * torch.randn(600, 5, generator=g)
    knows = nn.Sequential(nn.Identity(), nn.Linear(5, 5))  # its head receives the class-bearing input
    f = penultimate_features(knows, x)
    np.testing.assert_allclose(f, x.double().numpy())
    _, acc = fit_probe(f[:400], y[:400].numpy(), f[400:], y[400:].numpy())
    assert acc > 0.97
    blind = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 5))
    with torch.no_grad():
        blind[0].weight.zero_()  # features independent of the input: the probe can only guess
        blind[0].bias.copy_(torch.randn(8, generator=g))
    f = penultimate_features(blind, x)
    _, acc = fit_probe(f[:400], y[:400].numpy(), f[400:], y[400:].numpy())
    assert acc < 0.35  # chance is 0.2, the majority class a little more


def test_probe_of_a_run_and_the_cli(tmp_path, capsys):
    out = tmp_path / "r.h5"
    train(replace(tiny_config(epochs=2), train=replace(tiny_config().train, epochs=2, task="rotation")), out)
    r = linear_probe(out)
    assert r.epoch == 2 and 0 <= r.test_acc <= 1
    assert main(["probe", str(out), "--epoch", "0"]) == 0
    assert "epoch 0" in capsys.readouterr().out


def test_ud_refuses_a_rotation_run_against_a_classification_clean_run(tmp_path):
    from ulviz.measure.ud import study_ud, ud_table
    sal = SALConfig(estimator="fast", subset=100)
    base = replace(tiny_config(epochs=2), sal=sal)
    train(replace(base, name="clean"), tmp_path / "clean.h5")
    rot = replace(base, name="rot", poison=replace(base.poison, method="random"),
                  train=replace(base.train, task="rotation"), model=ModelConfig("mlp", width=32))
    train(rot, tmp_path / "rot.h5")
    with pytest.raises(UlvizError, match="same task"):
        ud_table(tmp_path / "clean.h5", [tmp_path / "rot.h5"])
    study = study_ud(sorted(tmp_path.glob("*.h5")))
    assert list(study.table["run"]) == ["clean"] and any("task rotation" in m for m in study.skipped)
