"""SAL checked against an independent plain loop (written here, not imported) and by hand."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_config
from ulviz import ModelConfig, SALConfig, UlvizError, UnknownNameError, create_model, load_dataset, open_run, train
from ulviz.measure.sal import layer_sal
from ulviz.measure.sal_runs import compute_run_sal


def reference_sal(model, x, y, *, iters, lr, eps, batch_size):
    """The paper's search as its script does it: per layer, deep copies and an SGD optimizer."""
    model = copy.deepcopy(model).eval()
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]

    def loss_acc(m):
        with torch.no_grad():
            outs = [(m(xb), yb) for xb, yb in batches]
        return (sum(F.cross_entropy(o, t, reduction="sum").item() for o, t in outs) / len(x),
                sum((o.argmax(1) == t).sum().item() for o, t in outs) / len(x))

    l0, a0 = loss_acc(model)
    result = {}
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        pname = f"{name}.weight"
        best = {"min": (l0, a0), "max": (l0, a0)}
        copies = {k: copy.deepcopy(model) for k in best}
        for k, m in copies.items():
            for n, p in m.named_parameters():
                p.requires_grad = n == pname
        opts = {k: torch.optim.SGD([dict(m.named_parameters())[pname]], lr=lr) for k, m in copies.items()}
        w0 = dict(model.named_parameters())[pname].detach().clone()
        for _ in range(iters):
            for k, sign in (("min", 1), ("max", -1)):
                for xb, yb in batches:
                    opts[k].zero_grad()
                    (sign * F.cross_entropy(copies[k](xb), yb)).backward()
                    opts[k].step()
                w = dict(copies[k].named_parameters())[pname]
                times = (w - w0).norm() / w0.norm()
                if times > eps:
                    with torch.no_grad():
                        w.copy_(w0 + (w - w0) / times * eps)
            lmin, amin = loss_acc(copies["min"])
            lmax, amax = loss_acc(copies["max"])
            if lmin < best["min"][0]:
                best["min"] = (lmin, amin)
            if lmax > best["max"][0]:
                best["max"] = (lmax, amax)
        s_max, s_min = best["max"][0] - l0, l0 - best["min"][0]
        result[pname] = dict(s_max=s_max, s_min=s_min, sal=s_max if abs(s_max) > abs(s_min) else s_min,
                             acc_drop=a0 - best["max"][1], acc_rise=best["min"][1] - a0)
    return result


def _trained(name, epochs=3, width=None):
    cfg = tiny_config(epochs=epochs)
    cfg = replace(cfg, model=ModelConfig(name, width))
    return train(cfg).model.double().eval()


@pytest.mark.parametrize("name, width", [("lenet5", None), ("mlp", 32), ("cnn", 4)])
def test_exact_equals_plain_loop_float64(name, width):
    model = _trained(name, width=width)
    ds = load_dataset("synthetic", train_limit=200)
    x, y = ds.x_train.double(), ds.y_train
    ours = layer_sal(model, (x, y), iters=3, lr_min=0.5, lr_max=0.5, eps=0.05, batch_size=64, device="cpu")
    ref = reference_sal(model, x, y, iters=3, lr=0.5, eps=0.05, batch_size=64)
    assert list(ours) == list(ref) and len(ref) >= 2
    for layer, r in ref.items():
        for part, value in r.items():
            assert abs(getattr(ours[layer], part) - value) <= 1e-5, (layer, part)
    # the search did something: some layer's loss moved, and the ball bound was active
    assert max(abs(r["s_max"]) for r in ref.values()) > 1e-4


def test_callers_model_untouched_and_inputs_equivalent():
    model = _trained("lenet5").float().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ds = load_dataset("synthetic", train_limit=128)
    a = layer_sal(model, (ds.x_train, ds.y_train), iters=2, batch_size=32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_train, ds.y_train), batch_size=50)
    b = layer_sal(model, loader, iters=2, batch_size=32)
    c = layer_sal(model, (ds.x_train, ds.y_train), iters=2, batch_size=32, cache_bytes=0)  # recompute path
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert a == b
    for k in a:
        assert abs(a[k].sal - c[k].sal) < 1e-6


def test_shuffle_is_seeded():
    model = _trained("mlp", width=16).float()
    ds = load_dataset("synthetic", train_limit=128)
    kw = dict(iters=2, batch_size=32, shuffle=True)
    a = layer_sal(model, (ds.x_train, ds.y_train), seed=1, **kw)
    assert a == layer_sal(model, (ds.x_train, ds.y_train), seed=1, **kw)
    assert a != layer_sal(model, (ds.x_train, ds.y_train), seed=2, **kw)


def test_fast_by_hand_on_linear_model():
    torch.manual_seed(0)
    model = create_model("linear", (1, 8, 8), 10).double()
    ds = load_dataset("synthetic", train_limit=100)
    x, y = ds.x_train.double(), ds.y_train
    out = layer_sal(model, (x, y), estimator="fast", iters=10, lr_min=0.1, lr_max=0.1, eps=0.05, batch_size=50)
    w0, b = model[1].weight.detach(), model[1].bias.detach()
    w = w0.clone().requires_grad_(True)
    loss0 = F.cross_entropy(F.linear(x.flatten(1), w, b), y)
    (g,) = torch.autograd.grad(loss0, w)
    travel = 10 * 2 * 0.1  # iters x batches per pass x lr

    def proj(v):
        r = (v - w0).norm() / w0.norm()
        return w0 + (v - w0) / r * 0.05 if r > 0.05 else v

    l_max = F.cross_entropy(F.linear(x.flatten(1), proj(w0 + travel * g), b), y).item()
    l_min = F.cross_entropy(F.linear(x.flatten(1), proj(w0 - travel * g), b), y).item()
    rec = out["1.weight"]
    assert rec.s_max == pytest.approx(max(l_max, loss0.item()) - loss0.item(), abs=1e-10)
    assert rec.s_min == pytest.approx(loss0.item() - min(l_min, loss0.item()), abs=1e-10)
    assert rec.s_max > 0 and rec.s_min > 0


def test_bad_arguments():
    model = create_model("linear", (1, 8, 8), 10)
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UnknownNameError, match="exact"):
        layer_sal(model, (x, y), estimator="slow")
    from ulviz import UlvizError
    with pytest.raises(UlvizError, match="DataLoader"):
        layer_sal(model, x)
    with pytest.raises(UlvizError, match="not a parameter"):
        layer_sal(model, (x, y), layers=["nope.weight"])
    for bad in (dict(eps=0), dict(lr_min=-0.1), dict(lr_max=0), dict(iters=0), dict(batch_size=0)):
        with pytest.raises(UlvizError, match="SAL needs eps > 0, lr_min > 0"):
            layer_sal(model, (x, y), **bad)


def test_sal_during_training_equals_post_hoc_and_resumes(tmp_path, monkeypatch):
    sal = SALConfig(estimator="exact", iters=2, batch_size=128, subset=200)
    cfg = tiny_config(epochs=3)
    cfg = replace(cfg, sal=sal)
    train(cfg, tmp_path / "live.h5")
    live = open_run(tmp_path / "live.h5")
    assert list(live.sal_epochs) == [1, 2, 3] and live.sal["sal"].shape == (3, 2)  # 3 epochs x 2 layers

    # post hoc on a copy trained without SAL: interrupted after one epoch, then resumed
    train(tiny_config(epochs=3), tmp_path / "post.h5")
    calls = []

    def stop_after_first(done, total):
        calls.append(done)
        if len(calls) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute_run_sal(tmp_path / "post.h5", sal, device="cpu", progress=stop_after_first)
    assert list(open_run(tmp_path / "post.h5").sal_epochs) == [1]
    import ulviz.measure.sal_runs as S  # compute_run_sal calls layer_sal from there
    real, computed = S.layer_sal, []
    monkeypatch.setattr(S, "layer_sal", lambda *a, **k: computed.append(1) or real(*a, **k))
    post = compute_run_sal(tmp_path / "post.h5", sal, device="cpu")
    assert len(computed) == 2  # epochs 2 and 3 only
    assert list(post.sal_epochs) == [1, 2, 3]
    for part in live.sal:
        np.testing.assert_allclose(post.sal[part], live.sal[part], atol=1e-6)
    # other settings replace the rows instead of mixing estimators
    fast = compute_run_sal(tmp_path / "post.h5", SALConfig(estimator="fast", subset=200), device="cpu")
    assert fast.sal_settings["estimator"] == "fast" and list(fast.sal_epochs) == [1, 2, 3]


@pytest.mark.parametrize("name, width", [("lenet5", None), ("cnn", 4)])
def test_vmapped_copies_give_the_same_numbers(monkeypatch, name, width):
    """The GPU path (min and max copies in one vmapped call), forced on the CPU."""
    import ulviz.measure.sal as S
    model = _trained(name, width=width)
    ds = load_dataset("synthetic", train_limit=100)
    x, y = ds.x_train.double(), ds.y_train
    loop = layer_sal(model, (x, y), iters=2, batch_size=50, device="cpu")
    monkeypatch.setattr(S, "VMAP_DEVICES", {"cpu"})
    vm = layer_sal(model, (x, y), iters=2, batch_size=50, device="cpu")
    for k in loop:
        for part in ("sal", "s_max", "s_min", "acc_drop", "acc_rise"):
            assert abs(getattr(loop[k], part) - getattr(vm[k], part)) <= 1e-9


def test_sal_of_chosen_epochs_only(tmp_path):
    sal = SALConfig(estimator="exact", iters=2, batch_size=128, subset=100)
    train(replace(tiny_config(epochs=3), sal=sal), tmp_path / "live.h5")
    train(tiny_config(epochs=3), tmp_path / "some.h5")
    some = compute_run_sal(tmp_path / "some.h5", sal, device="cpu", epochs=[3, 1])
    live = open_run(tmp_path / "live.h5")
    assert list(some.sal_epochs) == [1, 3]
    np.testing.assert_allclose(some.sal["sal"], live.sal["sal"][[0, 2]], atol=1e-6)  # the same rows
    with pytest.raises(UlvizError, match="no trained epoch 4"):
        compute_run_sal(tmp_path / "some.h5", sal, device="cpu", epochs=[4])


def test_describe_sal_says_what_was_measured():
    from ulviz.measure.sal_runs import describe_sal
    text = describe_sal(dict(estimator="exact", subset=128, split="train", eps=0.05, iters=10), [2, 4, 8, 12, 16])
    assert text.startswith("exact SAL on the first 128 samples of the data the run trained on")
    assert text.endswith("epochs 2, 4, 8, 12, 16")
    assert "every epoch" in describe_sal(dict(estimator="exact", split="test"), [1, 2, 3])
    assert "first 1024 samples" in describe_sal(dict(estimator="fast", subset=None), [1, 2, 3])  # fast's default
    assert describe_sal({}, []) == "no SAL stored"


@pytest.mark.parametrize("name, width, shuffle", [("lenet5", None, False), ("mlp", 32, True), ("cnn", 4, False),
                                                  ("resnet18", 2, True)])
def test_all_layers_batched_equals_the_per_layer_search_float64(name, width, shuffle):
    """Every layer's min and max copies in one vmapped call per batch give the per-layer search's
    numbers (and the plain loop's, independently, where shuffle is off)."""
    model = _trained(name, width=width, epochs=2)
    ds = load_dataset("synthetic", train_limit=96)
    x, y = ds.x_train.double(), ds.y_train
    kw = dict(iters=2, lr_min=0.5, lr_max=0.5, eps=0.05, batch_size=32, shuffle=shuffle, seed=3, device="cpu")
    per_layer = layer_sal(model, (x, y), batched=False, **kw)
    batched = layer_sal(model, (x, y), batched=True, **kw)
    assert list(batched) == list(per_layer)
    for k in per_layer:
        for part in ("sal", "s_max", "s_min", "acc_drop", "acc_rise"):
            assert abs(getattr(per_layer[k], part) - getattr(batched[k], part)) <= 1e-9, (k, part)
    if not shuffle:
        ref = reference_sal(model, x, y, iters=2, lr=0.5, eps=0.05, batch_size=32)
        for layer, r in ref.items():
            for part, value in r.items():
                assert abs(getattr(batched[layer], part) - value) <= 1e-5, (layer, part)
    assert max(abs(r.s_max) for r in batched.values()) > 1e-6  # the search moved something


def test_batched_search_splits_layers_into_groups_that_fit_the_memory_budget():
    from ulviz.measure.sal_batched import _layer_groups
    model = _trained("lenet5", epochs=1)
    ds = load_dataset("synthetic", train_limit=64)
    x, y = ds.x_train.double(), ds.y_train
    names = [n for n, p in model.named_parameters() if n.endswith("weight")]
    assert len(_layer_groups(model, x[:1], names, 64, 1 << 40)) == 1  # plenty: all at once
    tight = _layer_groups(model, x[:1], names, 64, 1)
    assert tight == [[n] for n in names]  # nothing fits: one layer a group, never zero
    whole = layer_sal(model, (x, y), iters=2, batch_size=32, batched=True, device="cpu")
    split = layer_sal(model, (x, y), iters=2, batch_size=32, batched=True, memory_bytes=1, device="cpu")
    for k in whole:  # the same search; grouped copies only sum in another order (float64 rounding)
        for field in ("sal", "s_max", "s_min", "acc_drop", "acc_rise", "loss0", "acc0"):
            assert getattr(whole[k], field) == pytest.approx(getattr(split[k], field), rel=1e-12, abs=1e-14)


def _peak_growth(**spec) -> dict:
    """Run tests/sal_peak.py in a fresh process: the peak RSS growth of each layer_sal call."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(here / "sal_peak.py"), json.dumps(spec)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


MB = 1 << 20


@pytest.mark.parametrize("path", ["per-layer", "per-layer vmapped", "batched"])
def test_peak_memory_does_not_grow_with_iters(path):
    """The search's peak memory is the same at 1 and 3 rounds. The vmapped per-layer path (the
    CUDA one, forced on the CPU) once kept every batch's graph alive through its weights: on
    256 images of this cnn its peak grew by ~500 MB a round, which this test sees."""
    spec = dict(model="cnn", width=8, samples=256, batch_size=128, iters=[1, 3], batched=path == "batched",
                vmap=path == "per-layer vmapped", cache_bytes=0, memory_bytes=256 * MB)
    first, more_rounds = _peak_growth(**spec)["growth"]
    assert more_rounds <= 0.5 * first + 32 * MB, (first / MB, more_rounds / MB)
    # and within the stated budget plus a batch's activations (2 copies x 4 layers of this cnn)
    assert first + more_rounds <= spec["cache_bytes"] + spec["memory_bytes"] + 64 * MB


@pytest.mark.parametrize("batched", [False, True])
def test_exact_sal_on_50000_images_streams_within_its_budget(batched):
    """Exact SAL on a CIFAR-10-sized training set (50,000 32x32 RGB images, synthetic) holds the
    stated budget plus a batch, never the whole set's activations: one stage's output for all
    50,000 images (4 x 16 x 16 floats each) alone is 205 MB, over the bound asserted here."""
    spec = dict(model="tiny-conv", samples=50_000, batch_size=500, iters=[1], batched=batched,
                cache_bytes=32 * MB, memory_bytes=32 * MB)
    out = _peak_growth(**spec)
    whole_set_stage = 50_000 * 4 * 16 * 16 * 4
    bound = spec["cache_bytes"] + (spec["memory_bytes"] if batched else 0) + 48 * MB  # + a batch's activations
    assert bound < whole_set_stage
    assert out["growth"][0] <= bound, (out["growth"][0] / MB, bound / MB)


def test_demo_on_a_gpu_measures_exact_sal_every_epoch_on_the_whole_set():
    from ulviz.studies.demo import demo_configs, demo_study, on_device
    cpu, gpu = demo_study("cifar10"), on_device(demo_study("cifar10"), "cuda")
    assert cpu.sal.subset == 128 and cpu.sal_epochs(16) == [2, 4, 8, 12, 16]  # what 2 cores afford
    assert gpu.sal.estimator == "exact" and gpu.sal.subset is None and gpu.sal_epochs(16) == list(range(1, 17))
    assert all(c.train.device == "cuda" for c in demo_configs("cifar10", device="cuda"))
    assert on_device(cpu, None) == cpu


def test_channels_last_gives_the_plain_loops_numbers_float64(monkeypatch):
    """The CUDA layout (model and data channels-last), forced on the CPU: both exact paths still
    equal the plain loop."""
    import ulviz.measure.sal as S
    model = _trained("cnn", width=4, epochs=1)
    ds = load_dataset("synthetic", train_limit=64)
    x, y = ds.x_train.double(), ds.y_train
    monkeypatch.setattr(S, "CHANNELS_LAST_DEVICES", {"cpu"})
    ref = reference_sal(model, x, y, iters=2, lr=0.5, eps=0.05, batch_size=32)
    for batched in (False, True):
        ours = layer_sal(model, (x, y), iters=2, lr_min=0.5, lr_max=0.5, batch_size=32, device="cpu", batched=batched)
        for layer, r in ref.items():
            for part, value in r.items():
                assert abs(getattr(ours[layer], part) - value) <= 1e-5, (layer, part, batched)


def test_measured_path_choice_times_both_paths_and_keeps_the_loops_numbers_float64():
    """batched="measure" (the GPU default) times one step of each path, then runs the cheaper one:
    whichever it is, the numbers are the plain loop's."""
    from ulviz.measure.sal import measured_step_costs
    from ulviz.measure.sal_batched import _layer_groups
    from ulviz.measure.sal_stages import _Chain
    from ulviz.models.registry import weight_layer_names
    model = _trained("cnn", width=4, epochs=1).double().eval().requires_grad_(False)
    ds = load_dataset("synthetic", train_limit=64)
    x, y = ds.x_train.double(), ds.y_train
    names = weight_layer_names(model)
    chain = _Chain(model, x, 32, 1 << 30)
    per_layer, batched = measured_step_costs(chain, y, names, _layer_groups(model, x[:1], names, 64, 1 << 30))
    assert per_layer > 0 and batched > 0
    ref = reference_sal(model, x, y, iters=2, lr=0.5, eps=0.05, batch_size=32)
    ours = layer_sal(model, (x, y), iters=2, lr_min=0.5, lr_max=0.5, batch_size=32, device="cpu", batched="measure")
    for layer, r in ref.items():
        for part, value in r.items():
            assert abs(getattr(ours[layer], part) - value) <= 1e-5, (layer, part)
    with pytest.raises(UlvizError, match="batched must be"):
        layer_sal(model, (x, y), iters=1, batched="sometimes")
