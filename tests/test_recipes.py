"""The training recipes and their augmentation: hand-checked crops and flips, applied in training
only, recorded in the run file and shown by `ulviz info`."""
from dataclasses import replace

import pytest
import torch
from torch import nn

from conftest import tiny_config
from ulviz import TrainConfig, UnknownNameError, open_run, train
from ulviz.cli import main
from ulviz.data.recipes import apply_recipe, augment_batch, default_recipe


def test_recipes_set_the_papers_training():
    paper = apply_recipe(TrainConfig(epochs=7), "paper", "cifar10")
    assert (paper.recipe, paper.optimizer, paper.lr, paper.momentum, paper.weight_decay, paper.schedule,
            paper.augment, paper.epochs) == ("paper", "sgd", 0.1, 0.9, 5e-4, "constant", "crop_flip", 7)
    assert apply_recipe(TrainConfig(), "paper", "mnist").augment == "none"  # no flips of digits
    assert apply_recipe(TrainConfig(), "paper", "cifar10", lr=0.01, augment="crop").lr == 0.01
    assert apply_recipe(TrainConfig(), "quick", "digits") == replace(TrainConfig(), recipe="quick")
    assert default_recipe("cifar10") == "paper" and default_recipe("cifar100") == "paper"
    assert default_recipe("digits") == "quick"
    with pytest.raises(UnknownNameError, match="quick"):
        apply_recipe(TrainConfig(), "fancy", "cifar10")


def _expected_crop(img, dy, dx, flip, pad=4):
    """torchvision's RandomCrop(padding=pad) then RandomHorizontalFlip, as a plain loop."""
    c, h, w = img.shape
    out = torch.zeros_like(img)
    for r in range(h):
        for col in range(w):
            src_r, src_c = r + dy - pad, (w - 1 - col if flip else col) + dx - pad
            if 0 <= src_r < h and 0 <= src_c < w:
                out[:, r, col] = img[:, src_r, src_c]
    return out


def test_augmentation_matches_a_plain_loop():
    x = torch.rand(16, 3, 6, 5)
    g = torch.Generator().manual_seed(3)
    out = augment_batch(x, "crop_flip", g)
    g2 = torch.Generator().manual_seed(3)  # the same draws, in the same order
    dy = torch.randint(0, 9, (16,), generator=g2)
    dx = torch.randint(0, 9, (16,), generator=g2)
    flip = torch.rand(16, generator=g2) < 0.5
    assert 0 < flip.sum() < 16
    for i in range(16):
        assert torch.equal(out[i], _expected_crop(x[i], int(dy[i]), int(dx[i]), bool(flip[i])))
    assert torch.equal(augment_batch(x, "none", g), x)
    crop_only = augment_batch(x, "crop", torch.Generator().manual_seed(3))
    g3 = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (16,), generator=g3), torch.randint(0, 9, (16,), generator=g3)
    assert all(torch.equal(crop_only[i], _expected_crop(x[i], int(dy[i]), int(dx[i]), False)) for i in range(16))


class _Recorder(nn.Module):
    """A linear model that remembers what it was shown, in which mode."""

    def __init__(self, in_shape, k):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), k)
        self.seen = {True: [], False: []}

    def forward(self, x):
        self.seen[self.training].append(x.detach().clone())
        return self.fc(x.flatten(1))


def test_augmentation_is_applied_in_training_and_never_in_evaluation(monkeypatch, tmp_path):
    import ulviz.models.registry as M
    made = []
    monkeypatch.setattr(M, "create_model", lambda name, shape, k, width=None: made.append(_Recorder(shape, k)) or made[-1])
    cfg = tiny_config(epochs=1)
    cfg = replace(cfg, train=replace(cfg.train, augment="crop_flip"))
    result = train(cfg, tmp_path / "r.h5")
    model = made[-1]
    from ulviz import load_dataset
    ds = load_dataset("synthetic")
    raw = {tuple(v.flatten().tolist()) for v in torch.cat([ds.x_train, ds.x_test])}
    trained = torch.cat(model.seen[True])
    evaluated = torch.cat(model.seen[False])
    assert len(trained) == len(ds.x_train)
    changed = sum(tuple(v.flatten().tolist()) not in raw for v in trained)
    assert changed > 0.8 * len(trained)  # most crops shift the image (1/81 chance of no shift, no flip)
    assert all(tuple(v.flatten().tolist()) in raw for v in evaluated)  # evaluation sees the images as they are
    assert result.status == "complete"
    # and without augmentation, training sees exactly the training images
    made.clear()
    train(tiny_config(epochs=1), tmp_path / "plain.h5")
    assert all(tuple(v.flatten().tolist()) in raw for v in torch.cat(made[-1].seen[True]))


def test_augmented_training_is_reproducible(tmp_path):
    cfg = tiny_config(epochs=2)
    cfg = replace(cfg, train=replace(cfg.train, augment="crop_flip"))
    a = train(cfg, tmp_path / "a.h5").history
    b = train(cfg, tmp_path / "b.h5").history
    assert [r["test_loss"] for r in a] == [r["test_loss"] for r in b]


def test_cli_records_and_shows_recipe_and_budget(tmp_path, capsys):
    out = tmp_path / "r.h5"
    rc = main(["train", "--dataset", "synthetic", "--model", "linear", "--epochs", "1", "--out", str(out),
               "--device", "cpu", "--quiet", "--recipe", "paper", "--augment", "crop", "--batch-size", "50",
               "--poison", "random", "--budget", "mnist"])
    assert rc == 0
    c = open_run(out).config
    assert (c.train.recipe, c.train.lr, c.train.schedule, c.train.augment, c.train.batch_size) == ("paper", 0.1, "constant", "crop", 50)
    assert c.poison.budget == "mnist"
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recipe paper" in text and "augment crop" in text and "budget mnist" in text
    # the default recipe follows the dataset
    main(["train", "--dataset", "synthetic", "--model", "linear", "--epochs", "1", "--out", str(tmp_path / "q.h5"),
          "--device", "cpu", "--quiet"])
    assert open_run(tmp_path / "q.h5").config.train.recipe == "quick"


def test_cifar_subset_trains_with_the_paper_recipe_by_default(tmp_path, capsys):
    from conftest import SHARED_DATA
    d = SHARED_DATA / "cifar10-subset"
    if not (d / "data_batch_1.bin").exists():
        pytest.skip(f"CIFAR-10 subset not found at {d}")
    out = tmp_path / "c.h5"
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(d), "--train-limit", "64", "--test-limit", "32",
                 "--model", "cnn", "--width", "4", "--epochs", "1", "--poison", "cuda", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    c = open_run(out).config
    assert (c.train.recipe, c.train.augment, c.train.lr, c.train.schedule) == ("paper", "crop_flip", 0.1, "constant")
