"""Defenses on hand-checked images, the PGD attack of adversarial training, and defenses in training."""
import io

import numpy as np
import pytest
import torch

from ulviz.protect.defenses import (adversarial_training, cutmix, cutout, defend_batch, defend_data, grayscale, iss,
                                    jpeg, list_defenses, mixup, parse_defense, pgd_attack, ueraser)
from ulviz.core.errors import UlvizError


def test_registry_and_specs():
    assert list_defenses() == ["jpeg", "grayscale", "iss", "cutout", "mixup", "cutmix", "ueraser", "at"]
    assert parse_defense("jpeg:quality=30") == {"name": "jpeg", "params": {"quality": 30}}
    with pytest.raises(UlvizError):
        parse_defense("nope")
    with pytest.raises(UlvizError, match="does not take q; it takes quality"):
        defend_data(torch.rand(1, 3, 8, 8), [{"name": "jpeg", "params": {"q": 3}}])
    # a value of the wrong type is refused when the spec is read, not by the first batch
    with pytest.raises(UlvizError, match="alpha must be a number, got 'abc'"):
        parse_defense("mixup:alpha=abc")
    with pytest.raises(UlvizError, match="quality must be an integer, got 2.5"):
        parse_defense("jpeg:quality=2.5")
    assert parse_defense("mixup:alpha=1")["params"] == {"alpha": 1}  # an integer is a number


def test_grayscale_of_a_pure_red_image():
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    g = grayscale(red)
    assert torch.allclose(g, torch.full_like(red, 0.299))


def test_jpeg_changes_the_image_and_round_trips_through_the_codec():
    from PIL import Image
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = jpeg(x, quality=10)
    assert (y - x).abs().mean() > 0.05  # quality 10 destroys high-frequency noise
    # the same bytes through Pillow by hand give the same image
    arr = (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=10)
    ref = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) / 255
    np.testing.assert_allclose(y[0].permute(1, 2, 0).numpy(), ref, atol=1e-6)
    assert torch.equal(iss(x), jpeg(grayscale(x), 10))


def test_cutout_zeroes_one_patch_of_the_right_size():
    x = torch.ones(8, 3, 32, 32)
    out, _ = cutout(x, torch.zeros(8, dtype=torch.long), 10, torch.Generator().manual_seed(1), size=16)
    for img in out:
        zeros = (img[0] == 0)
        rows, cols = zeros.any(1).nonzero().ravel(), zeros.any(0).nonzero().ravel()
        assert zeros.sum() == len(rows) * len(cols)  # one rectangle
        assert len(rows) <= 16 and len(cols) <= 16 and (img == 0).all(0).equal(zeros)  # every channel
    assert (out == 0).sum(dim=(1, 2, 3)).max() == 3 * 16 * 16  # a square fully inside: exactly 16 x 16


def test_mixup_mixes_images_and_labels_with_the_same_lambda():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 1, 4, 4).clone()  # image i is all i
    y = torch.arange(6)  # one class per sample: the soft label names the partner
    xm, ym = mixup(x, y, 6, torch.Generator().manual_seed(3), alpha=1.0)
    lams = []
    for i in range(6):
        others = [j for j in range(6) if j != i and ym[i, j] > 0]
        lam = ym[i, i].item()
        partner = others[0] if others else i
        assert torch.allclose(xm[i], torch.full_like(xm[i], lam * i + (1 - lam) * partner), atol=1e-5)
        if others:
            lams.append(lam)
    assert torch.allclose(ym.sum(1), torch.ones(6)) and len(set(round(l, 6) for l in lams)) <= 1  # one lambda a batch


def test_cutmix_labels_follow_the_pasted_area():
    x = torch.cat([torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)])
    for seed in range(5):
        xm, ym = cutmix(x, torch.tensor([0, 1]), 2, torch.Generator().manual_seed(seed))
        for i in range(2):
            assert ym[i, 1].item() == pytest.approx(xm[i].mean().item(), abs=1e-6)  # label share = pixel share


def test_ueraser_augments_every_image_repeatably_and_keeps_labels():
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    a, ya = ueraser(x, y, 10, torch.Generator().manual_seed(5))
    b, _ = ueraser(x, y, 10, torch.Generator().manual_seed(5))
    c, _ = ueraser(x, y, 10, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)  # randomness from our generator, not a global one
    assert torch.equal(ya, y) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert ((a - x).abs().flatten(1).amax(1) > 0.01).float().mean() > 0.5  # strong: most images change visibly
    with pytest.raises(UlvizError):
        ueraser(x, y, 10, None, p=2)
    with pytest.raises(UlvizError, match="3-channel"):
        ueraser(torch.rand(2, 1, 8, 8), y[:2], 10)


def _tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


def test_pgd_attack_raises_the_loss_stays_in_its_ball_and_leaves_the_model_alone():
    model = _tiny_net().train()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats included
    eps = 8 / 255
    x_adv = pgd_attack(model, x, y, eps=eps, steps=10, alpha=2 / 255, generator=torch.Generator().manual_seed(3))
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    loss = lambda inp: torch.nn.functional.cross_entropy(model(inp), y).item()
    assert loss(x_adv) > loss(x) + 0.02  # the attack really ascends (1.105 -> 1.155 here)
    noise = (x + eps * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(4)))).clamp(0, 1)
    assert loss(x_adv) > loss(noise)  # and beats random noise of the same size
    # the registered defense is the same attack, and needs the model through defend_batch
    xa, ya = adversarial_training(model, x, y, torch.Generator().manual_seed(3), eps=eps, steps=10, alpha=2 / 255)
    assert torch.equal(xa, x_adv) and torch.equal(ya, y)
    with pytest.raises(UlvizError, match="needs the model"):
        defend_batch(x, y, 3, [{"name": "at", "params": {}}])
    xb, _ = defend_batch(x, y, 3, [{"name": "at", "params": {"eps": 0.0}}], torch.Generator(), model)
    assert torch.equal(xb, x)  # a zero ball leaves the batch as it was


def test_training_defends_the_training_images_never_the_test_set(tmp_path):
    from dataclasses import replace
    from conftest import tiny_config
    from ulviz import load_dataset, train
    from ulviz.cli import main
    from ulviz.protect.poisons import make_poison
    seen = []
    cfg = tiny_config(epochs=1)
    cfg = replace(cfg, train=replace(cfg.train, defenses=[{"name": "jpeg", "params": {"quality": 20}},
                                                          {"name": "mixup", "params": {}}]))
    train(cfg, tmp_path / "d.h5", callbacks=[lambda ctx: seen.append(ctx.dataset)])
    ds = load_dataset(cfg.data)
    assert torch.equal(seen[-1].x_train, jpeg(make_poison(cfg.poison, ds).x_train, 20))  # once, before training
    assert torch.equal(seen[-1].x_test, ds.x_test)  # the test set untouched
    assert main(["train", "--dataset", "synthetic", "--model", "mlp", "--epochs", "1", "--defense", "nope",
                 "--out", str(tmp_path / "x.h5"), "--quiet"]) == 2


def test_adversarial_training_is_wired_into_the_training_loop(tmp_path):
    """at with a zero ball trains exactly like no defense (the PGD start and steps collapse onto x);
    a real ball changes what the model learns."""
    from dataclasses import replace
    from conftest import tiny_config
    from ulviz import train
    cfg = tiny_config(epochs=2)
    with_at = lambda **p: replace(cfg, train=replace(cfg.train, defenses=[{"name": "at", "params": {"steps": 2, **p}}]))
    plain = train(cfg, None, progress=False).model.state_dict()
    zero = train(with_at(eps=0.0), None, progress=False).model.state_dict()
    real = train(with_at(eps=0.3, alpha=0.15), None, progress=False).model.state_dict()
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert any(not torch.allclose(plain[k], real[k]) for k in plain)


def test_ud_compares_a_defended_run_only_with_the_clean_run_under_the_same_defenses(tmp_path):
    from dataclasses import replace
    from conftest import tiny_config
    from ulviz import SALConfig, train
    from ulviz.measure.ud import ud_table
    base = replace(tiny_config(epochs=2), sal=SALConfig(estimator="fast", subset=100))
    defended = replace(base.train, defenses=[{"name": "cutout", "params": {"size": 2}}])
    train(replace(base, name="clean"), tmp_path / "clean.h5")
    train(replace(base, name="clean", train=defended), tmp_path / "clean-cutout.h5")
    train(replace(base, name="noise", train=defended, poison=replace(base.poison, method="random")), tmp_path / "n.h5")
    with pytest.raises(UlvizError, match="same defenses"):
        ud_table(tmp_path / "clean.h5", [tmp_path / "n.h5"])
    table, _ = ud_table(tmp_path / "clean-cutout.h5", [tmp_path / "n.h5"])
    assert list(table["role"]) == ["reference", "protected"]


def test_runs_table_shows_task_and_defenses(tmp_path):
    from dataclasses import replace
    from conftest import tiny_config
    from ulviz import train
    from ulviz.store.runs import runs_table
    cfg = tiny_config(epochs=1)
    train(replace(cfg, train=replace(cfg.train, defenses=[{"name": "grayscale", "params": {}},
                                                          {"name": "cutout", "params": {"size": 2}}])), tmp_path / "a.h5")
    train(cfg, tmp_path / "b.h5")
    table = runs_table([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert list(table["defenses"]) == ["grayscale, cutout", "-"] and list(table["task"]) == ["classify", "classify"]
