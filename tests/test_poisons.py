import numpy as np
import pytest
import torch
from torch.nn import functional as F

from ulviz import PoisonConfig, UlvizError, UnknownNameError, load_dataset
from ulviz.protect import poisons as P
from ulviz.protect.poisons import list_methods, make_poison

# small settings so the model-based methods run in about a second on synthetic data
FAST = {"em": {"max_rounds": 2, "pgd_steps": 2}, "rem": {"train_epochs": 0.2, "pgd_steps": 2, "samples": 2, "rho_steps": 2},
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


@pytest.mark.parametrize("method, params, message", [
    ("em", {"eps": "8/255"}, "eps must be a number, got '8/255'"),
    ("em", {"pgd_steps": 2.5}, "pgd_steps must be an integer"),  # default None: its type is declared
    ("ops", {"pixels": True}, "pixels must be an integer, got True"),  # a bool is not a number
    ("random", {"mode": 1}, "mode must be a string"),
    ("rem", {"eps": None}, "eps must be a number, got None"),  # None only where the default is None
])
def test_parameters_of_the_wrong_type_are_refused_before_anything_runs(method, params, message):
    with pytest.raises(UlvizError, match=message):
        make_poison(PoisonConfig(method, params=params), load_dataset("synthetic"), cache=False)


def test_every_parameter_has_a_type():
    from ulviz.protect.poisons import method_info, resolve_params
    for name in list_methods():
        m = method_info(name)
        assert all(v is not None or k in m.kinds for k, v in m.defaults.items()), name
    # integers pass for numbers, None passes where the default is None
    assert resolve_params("em", {"eps": 1, "pgd_steps": None})["eps"] == 1


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
        sel = (ds.y_train == k).nonzero().flatten()
        assert (filters[k] == 1.0).sum() >= 1 and filters[k].max() == 1.0
        for i in sel[:5]:  # a plain loop: blur one image, divide by its maximum (the original's step)
            img = ds.x_train[i, 0].double()
            out = torch.zeros_like(img)
            padded = F.pad(img, (1, 1, 1, 1))
            for r in range(img.shape[0]):
                for col in range(img.shape[1]):
                    out[r, col] = (padded[r:r + 3, col:col + 3] * filters[k].double()).sum()
            expected = (out / out.max()).clamp(0, 1)
            assert torch.allclose(c.x_train[i, 0].double(), expected, atol=1e-5)
            assert c.x_train[i].max() == pytest.approx(1.0, abs=1e-6)  # every image is normalized to peak 1


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
    monkeypatch.setitem(P.registry._METHODS, "lsp", replace(real, fn=lambda *a: calls.append(1) or real.fn(*a)))
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


def test_cuda_normalizes_each_image_by_its_maximum_over_channels():
    # a 3-channel image whose blurred peak lies in one channel: all channels divided by that one peak
    from ulviz.data.datasets import Dataset
    x = torch.full((2, 3, 4, 4), 0.1)
    x[:, 1, 2, 2] = 0.8
    ds = Dataset("rgb", x, torch.tensor([0, 0]), x[:1], torch.tensor([0]), 1)
    p = make_poison(PoisonConfig("cuda", params={"blur": 0.0}), ds, cache=False, device="cpu")
    # blur 0: the filter is a single 1-tap, a shift; peak 0.8 -> 1, 0.1 -> 0.125 in every channel
    assert p.x_train.max() == pytest.approx(1.0)
    assert sorted(set(round(v, 4) for v in p.x_train[0].flatten().tolist()) - {0.0}) == [0.125, 1.0]


def _quadrant_energies(noise):
    h, w = noise.shape[-2:]
    quads = [noise[..., :h // 2, :w // 2], noise[..., :h // 2, w // 2:], noise[..., h // 2:, :w // 2], noise[..., h // 2:, w // 2:]]
    return [float((q ** 2).sum()) for q in quads]


def test_ar_noise_fills_the_whole_image():
    # the check: energy in each quadrant within a factor 4 of every other (it was 96-99.8% in the corner)
    from ulviz.data.datasets import Dataset
    x = torch.full((40, 3, 32, 32), 0.5)
    y = torch.arange(40) % 4
    ds = Dataset("rgb", x, y, x[:4], y[:4], 4)
    p = make_poison(PoisonConfig("ar"), ds, cache=False, device="cpu")
    noise = p.x_train - x
    e = _quadrant_energies(noise)
    assert max(e) / min(e) < 4
    for i in range(0, 40, 9):  # per image too, with room for one sample's chance
        ei = _quadrant_energies(noise[i])
        assert max(ei) / min(ei) < 16
    assert torch.allclose(noise.flatten(1).norm(dim=1), torch.ones(40), atol=1e-4)  # L2 budget 1.0 on 32x32x3


def test_ar_coefficients_sum_to_one_and_drive_the_noise():
    from ulviz.data.datasets import Dataset
    from ulviz.protect.poisons.patterns import _ar_generate
    x = torch.full((6, 3, 32, 32), 0.5)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ds = Dataset("rgb", x, y, x[:1], y[:1], 3)
    p = make_poison(PoisonConfig("ar"), ds, cache=False, device="cpu")
    coeffs = torch.tensor(p.info["coefficients"])  # (classes, channels, 3, 3)
    assert coeffs.shape == (3, 3, 3, 3)
    assert torch.allclose(coeffs.sum((2, 3)), torch.ones(3, 3), atol=1e-5)  # signed sum 1, current tap 0
    assert (coeffs[:, :, 2, 2] == 0).all()
    # past the canvas' first two rows/columns, each value is its window's weighted sum (a plain loop)
    g = torch.Generator().manual_seed(0)
    pat = _ar_generate(coeffs[1], 1, (10, 10), 0, g)[0]
    for c in range(3):
        for i in range(2, 10):
            for j in range(2, 10):
                assert pat[c, i, j].item() == pytest.approx((pat[c, i - 2:i + 1, j - 2:j + 1] * coeffs[1, c]).sum().item(), abs=1e-4)


def test_lsp_points_come_from_per_class_gaussians_at_hypercube_vertices(ds):
    from ulviz.protect.poisons.patterns import _hypercube_vertices
    v = _hypercube_vertices(10, 12, torch.Generator().manual_seed(0))
    assert set(v.unique().tolist()) == {-1.0, 1.0} and len({tuple(r) for r in v.tolist()}) == 10
    p = _make(ds, "lsp")
    d = (p.x_train - ds.x_train)
    inside = ((ds.x_train + d) > 0).all() and ((ds.x_train + d) < 1).all()
    patch = p.info["patch"]
    # constant on each patch (nearest-neighbour upsampling of one value per patch and channel)
    block = d[0, 0, :patch, :patch]
    if inside:
        assert torch.allclose(block, block[0, 0].expand_as(block), atol=1e-6)
    # samples of one class are closer to each other (in direction) than to another class's
    dirs = F.normalize(d.flatten(1), dim=1)
    sim = dirs @ dirs.T
    same = ds.y_train[:, None] == ds.y_train[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.2


def test_ops_score_follows_the_original_objective():
    # class 0's images are dark except position (1, 2) which is constant grey: white at any dark
    # position deviates consistently; the chosen pixel maximizes mean/std over images and channels
    from ulviz.data.datasets import Dataset
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20, 3, 4, 4, generator=g) * 0.2
    x[:10, :, 3, 3] = 0.0  # class 0: always exactly black at (3, 3): |white - x| = 1 with std 0
    y = torch.tensor([0] * 10 + [1] * 10)
    ds = Dataset("rgb", x, y, x[:2], y[:2], 2)
    p = make_poison(PoisonConfig("ops"), ds, cache=False, device="cpu")
    assert p.info["pixels"][0] == [[3, 3]] and p.info["colours"][0] == [[1.0, 1.0, 1.0]]
    # class 1 may not take the same (position, colour) pair
    assert (p.info["pixels"][1], p.info["colours"][1]) != ([[3, 3]], [[1.0, 1.0, 1.0]])
    assert (p.x_train[:10, :, 3, 3] == 1.0).all()
    assert ((p.x_train != x).flatten(2).any(1).sum(1) <= 1).all()  # one pixel per image


def test_pgd_moves_saturated_pixels_when_the_gradient_asks():
    # a pixel at 0 whose delta is negative: the gradient is taken at the clamped image, so an
    # ascent direction pointing up moves it (through clamp w.r.t. delta its gradient would be 0)
    from ulviz.protect.poisons.optimized import pgd_on_image
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[-1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
        model[1].bias.zero_()
    x = torch.zeros(1, 1, 2, 2)
    delta = torch.full_like(x, -0.03)
    out = pgd_on_image(model, x, torch.tensor([1]), delta, eps=0.03, step=0.01, steps=2)  # class 1 likes pixel 0 up
    assert out[0, 0, 0, 0].item() == pytest.approx(0.02)  # -0.03 -> 0.01 (from the clamped 0) -> 0.02
    # no gradient there: the image stays where it was (delta is projected back to the valid range, as the original's)
    assert torch.equal((x + out).clamp(0, 1).flatten()[1:], (x + delta).clamp(0, 1).flatten()[1:])
    # the same loop differentiating through clamp w.r.t. delta never moves it
    d = delta.clone()
    for _ in range(2):
        d.requires_grad_(True)
        loss = F.cross_entropy(model((x + d).clamp(0, 1)), torch.tensor([1]))
        (grad,) = torch.autograd.grad(loss, d)
        d = (d.detach() - 0.01 * grad.sign()).clamp(-0.03, 0.03)
    assert d[0, 0, 0, 0].item() == pytest.approx(-0.03)


def test_em_starts_from_zero_and_tap_targets_the_next_class(ds):
    p = _make(ds, "em", max_rounds=1, pgd_steps=1)
    d = (p.x_train - ds.x_train)
    # one step of 0.8/255 from zero: every unclamped change is exactly one step
    moved = d[(d != 0)].abs()
    assert torch.allclose(moved.max(), torch.tensor(0.8 / 255), atol=1e-6)
    # with room to move, the targeted attack sends most images to the next class of the crafting model
    t = _make(ds, "tap", eps=0.3, steps=20, step=0.03, train_epochs=10)
    assert t.info["crafting_model_train_acc"] > 0.5
    assert t.info["targeted_success"] > 0.5  # chance is 0.1


def test_budget_conventions_scale_the_defaults():
    sp = P.scaled_params
    em = P.method_info("em").defaults
    assert sp("em", em, (3, 32, 32), "standard")["eps"] == pytest.approx(8 / 255)
    assert sp("em", em, (1, 28, 28), "mnist")["eps"] == pytest.approx(0.3)
    assert sp("em", em, (1, 28, 28), "mnist")["step"] == pytest.approx(0.03)
    assert sp("em", em, (1, 8, 8), "energy")["eps"] == pytest.approx(8 / 255 * (3072 / 64) ** 0.5)
    assert sp("ar", P.method_info("ar").defaults, (1, 8, 8), "energy")["l2"] == 1.0
    assert sp("ops", P.method_info("ops").defaults, (1, 8, 8), "energy")["pixels"] == 3
    with pytest.raises(UnknownNameError):
        sp("em", em, (1, 8, 8), "huge")
    # a parameter given explicitly wins over the convention
    ds = load_dataset("synthetic")
    p = make_poison(PoisonConfig("random", params={"eps": 0.01}, budget="mnist"), ds, cache=False, device="cpu")
    assert (p.x_train - ds.x_train).abs().max() <= 0.01 + 1e-6
    q = make_poison(PoisonConfig("random", budget="mnist"), ds, cache=False, device="cpu")
    assert (q.x_train - ds.x_train).abs().max() > 0.2
