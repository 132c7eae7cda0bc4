import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ulviz import PoisonConfig, UlvizError, UnknownNameError, load_dataset
from ulviz import poisons as P
from ulviz.poisons import list_methods, make_poison

# small settings so the model-based methods run in about a second on synthetic data
FAST = {"em": {"max_rounds": 2, "pgd_steps": 2, "train_steps": 3}, "rem": {"max_rounds": 1, "pgd_steps": 2, "train_steps": 2, "rho_steps": 2},
        "tap": {"train_epochs": 1, "steps": 3}}


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("ULVIZ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic")


def _make(ds, method, ratio=1.0, **params):
    return make_poison(PoisonConfig(method, ratio=ratio, params={**FAST.get(method, {}), **params}), ds, device="cpu")


def test_registry_lists_every_method():
    assert list_methods() == ["clean", "random", "import", "em", "rem", "tap", "lsp", "ops", "ar", "cuda"]
    with pytest.raises(UnknownNameError, match="em"):
        make_poison("poison-x", load_dataset("synthetic"))
    with pytest.raises(UlvizError, match="does not take"):
        make_poison(PoisonConfig("random", params={"epsilon": 0.1}), load_dataset("synthetic"))


@pytest.mark.parametrize("method, norm, bound", [
    ("random", "linf", 8 / 255), ("em", "linf", 8 / 255), ("rem", "linf", 8 / 255), ("tap", "linf", 8 / 255),
    ("lsp", "l2", 8 * 6 / 255), ("ar", "l2", (64 / 3072) ** 0.5), ("ops", "l0", 1),
])
def test_budget_respected(ds, method, norm, bound):
    p = _make(ds, method)
    d = (p.x_train - ds.x_train).double().flatten(1)
    if norm == "linf":
        worst = d.abs().max().item()
    elif norm == "l2":
        worst = d.norm(dim=1).max().item()
    else:
        worst = int((d != 0).sum(1).max().item())  # one channel: pixels = entries
    assert 0 < worst <= bound * (1 + 1e-5) + 1e-7
    assert p.x_train.min() >= 0 and p.x_train.max() <= 1
    assert torch.equal(p.indices, torch.arange(len(ds.x_train)))


def test_budget_check_catches_violations(ds):
    method = P.method_info("random")
    bad = ds.x_train.clone()
    bad[0, 0, 0, 0] += 0.5
    with pytest.raises(UlvizError, match="linf budget"):
        P.check_budget(ds.x_train, bad, torch.arange(len(bad)), method, {"eps": 8 / 255})
    with pytest.raises(UlvizError, match="unprotected"):
        P.check_budget(ds.x_train, bad, torch.arange(1, len(bad)), method, {"eps": 1.0})


def _one_pattern_per_class(ds, p):
    """Wherever neither image is clipped, all samples of a class carry the same perturbation."""
    d = p.x_train - ds.x_train
    inside = (p.x_train > 0) & (p.x_train < 1)
    for k in range(ds.num_classes):
        members = (ds.y_train == k).nonzero().flatten()
        ref = members[0]
        for i in members[1:]:
            both = inside[ref] & inside[i]
            assert torch.allclose(d[i][both], d[ref][both], atol=1e-6)


@pytest.mark.parametrize("method", ["random", "em"])
def test_classwise_modes_give_one_pattern_per_class(ds, method):
    p = _make(ds, method, mode="class")
    _one_pattern_per_class(ds, p)
    sample = _make(ds, method, mode="sample")
    with pytest.raises(AssertionError):
        _one_pattern_per_class(ds, sample)


def test_ops_and_cuda_are_class_patterns(ds):
    p = _make(ds, "ops")
    for k, pixels in p.info["pixels"].items():
        (i, j), = pixels
        values = p.x_train[ds.y_train == int(k), 0, i, j]
        assert values.unique().numel() == 1 and values[0].item() in (0.0, 1.0)
    c = _make(ds, "cuda")
    filters = torch.tensor(c.info["filters"])  # (classes, k, k)
    for k in range(ds.num_classes):
        sel = ds.y_train == k
        expected = F.conv2d(ds.x_train[sel], filters[k][None, None], padding=1).clamp(0, 1)
        assert torch.allclose(c.x_train[sel], expected, atol=1e-6)
        assert (filters[k] == 1.0).sum() >= 1 and filters[k].max() == 1.0


@pytest.mark.parametrize("method", ["random", "lsp", "ops", "cuda", "em"])
def test_ratio_half_perturbs_exactly_half(ds, method):
    p = _make(ds, method, ratio=0.5)
    changed = (p.x_train != ds.x_train).flatten(1).any(1)
    assert len(p.indices) == len(ds.x_train) // 2
    assert changed.sum().item() == len(p.indices) or method == "ops"
    assert not changed[~torch.isin(torch.arange(len(changed)), p.indices)].any()


def test_cache_hit_on_second_call(ds, monkeypatch, tmp_path):
    calls = []
    real = P.method_info("lsp")
    from dataclasses import replace
    monkeypatch.setitem(P._METHODS, "lsp", replace(real, fn=lambda *a: calls.append(1) or real.fn(*a)))
    a = make_poison("lsp", ds)
    b = make_poison("lsp", ds)
    assert len(calls) == 1 and torch.equal(a.x_train, b.x_train) and "cached" in b.info
    assert len(list((tmp_path / "cache").glob("lsp-*.npz"))) == 1
    make_poison(PoisonConfig("lsp", seed=1), ds)  # another seed is another entry
    assert len(calls) == 2


def test_import_accepts_matching_and_rejects_wrong_files(ds, tmp_path):
    x = (ds.x_train.numpy() * 255).astype(np.uint8).transpose(0, 2, 3, 1)  # NHWC uint8, as tools write
    x[:, 0, 0, 0] = 255
    np.savez(tmp_path / "good.npz", x_train=x)
    p = make_poison(PoisonConfig("import", params={"path": str(tmp_path / "good.npz")}), ds)
    assert (p.x_train[:, 0, 0, 0] == 1.0).all()
    np.savez(tmp_path / "short.npz", x_train=x[:-1])
    with pytest.raises(UlvizError, match="one entry per training sample"):
        make_poison(PoisonConfig("import", params={"path": str(tmp_path / "short.npz")}), ds)
    np.savez(tmp_path / "shape.npz", delta=np.zeros((len(x), 1, 9, 9), np.float32))
    with pytest.raises(UlvizError, match=r"shape \(600, 1, 9, 9\)"):
        make_poison(PoisonConfig("import", params={"path": str(tmp_path / "shape.npz")}), ds)
    with pytest.raises(UlvizError, match="no such file"):
        make_poison(PoisonConfig("import", params={"path": str(tmp_path / "none.npz")}), ds)


def test_test_set_is_never_touched(tmp_path):
    from conftest import tiny_config
    from dataclasses import replace
    from ulviz import open_run, train
    cfg = replace(tiny_config(epochs=1), poison=PoisonConfig("cuda"))
    train(cfg, tmp_path / "r.h5")
    run = open_run(tmp_path / "r.h5")
    assert run.config.poison.method == "cuda"
    ds = load_dataset("synthetic")
    before = ds.x_test.clone()
    make_poison("cuda", ds)
    assert torch.equal(ds.x_test, before)
