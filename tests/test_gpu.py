"""The GPU paths against independent CPU computations. Skipped where there is no CUDA device
(CI has none); run them on a machine with one: `python -m pytest tests/test_gpu.py`."""
from dataclasses import replace

import pytest
import torch

from conftest import tiny_config
from test_landscape import _assert_points_by_hand, _model
from test_sal import _trained, reference_sal
from ulviz import PoisonConfig, SALConfig, load_dataset, open_run, train
from ulviz.measure.landscape import surfaces
from ulviz.measure.sal import layer_sal
from ulviz.protect.poisons import make_poison

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("name, width", [("lenet5", None), ("mlp", 32), ("cnn", 4)])
def test_exact_sal_on_gpu_equals_the_plain_loop_on_cpu(name, width):
    model = _trained(name, width=width)  # float64, so the two devices agree to rounding
    ds = load_dataset("synthetic", train_limit=200)
    x, y = ds.x_train.double(), ds.y_train
    ours = layer_sal(model, (x, y), iters=3, lr_min=0.5, lr_max=0.5, eps=0.05, batch_size=64, device="cuda")
    ref = reference_sal(model, x, y, iters=3, lr=0.5, eps=0.05, batch_size=64)
    assert next(model.parameters()).device.type == "cpu"  # the caller's model stays where it was
    for layer, r in ref.items():
        for part, value in r.items():
            assert abs(getattr(ours[layer], part) - value) <= 1e-5, (layer, part)


@pytest.mark.parametrize("name, width", [("lenet5", None), ("cnn", 4), ("resnet18", 2)])
def test_all_layers_batched_on_gpu_equals_the_plain_loop_on_cpu(name, width):
    model = _trained(name, width=width)
    ds = load_dataset("synthetic", train_limit=200)
    x, y = ds.x_train.double(), ds.y_train
    ours = layer_sal(model, (x, y), iters=3, lr_min=0.5, lr_max=0.5, eps=0.05, batch_size=64, device="cuda",
                     batched=True)
    ref = reference_sal(model, x, y, iters=3, lr=0.5, eps=0.05, batch_size=64)
    for layer, r in ref.items():
        for part, value in r.items():
            assert abs(getattr(ours[layer], part) - value) <= 1e-5, (layer, part)


@pytest.mark.parametrize("name, width", [("mlp", 16), ("lenet5", None), ("cnn", 4)])
def test_plane_on_gpu_equals_hand_loaded_weights_on_cpu(name, width):
    model, x, y = _model(name, width=width)
    land = surfaces.plane(model, (x, y), resolution=5, span=0.5, seed=3, device="cuda")
    _assert_points_by_hand(land, model, x, y, [(0, 4), (2, 2), (4, 0), (3, 1)], tol=1e-8)


def test_training_with_sal_on_gpu_matches_cpu(tmp_path):
    cfg = replace(tiny_config(epochs=2), sal=SALConfig(estimator="exact", subset=64, iters=2))
    gpu = train(replace(cfg, train=replace(cfg.train, device="cuda")), out=tmp_path / "gpu.h5")
    cpu = train(cfg, out=tmp_path / "cpu.h5")
    g, c = open_run(tmp_path / "gpu.h5"), open_run(tmp_path / "cpu.h5")
    assert g.status == c.status == "complete"
    # float32 kernels differ between devices, so the two runs agree closely, not bit for bit
    assert abs(g.metrics["train_loss"].iloc[-1] - c.metrics["train_loss"].iloc[-1]) < 1e-2
    assert g.sal["sal"].shape == c.sal["sal"].shape
    assert gpu.history[-1]["epoch"] == cpu.history[-1]["epoch"] == 2


def test_em_poison_on_gpu_keeps_its_budget():
    ds = load_dataset("synthetic", train_limit=128)
    p = make_poison(PoisonConfig("em", params={"max_rounds": 2}), ds, cache=False, device="cuda")
    assert (p.x_train - ds.x_train).abs().max().item() <= 8 / 255 + 1e-6
    assert p.x_train.device.type == "cpu"


@pytest.mark.parametrize("batched", [False, True])
def test_sal_peak_memory_on_gpu_does_not_grow_with_iters(batched):
    """Issue 26: the per-layer path's peak grew ~4.4 GiB a round on 512 CIFAR images."""
    torch.manual_seed(0)
    from ulviz import create_model
    model = create_model("cnn", (3, 32, 32), 10, width=16)
    x, y = torch.rand(512, 3, 32, 32), torch.randint(0, 10, (512,))
    budget = 256 << 20
    peaks = []
    for iters in (1, 4):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        layer_sal(model, (x, y), iters=iters, batch_size=128, device="cuda", batched=batched, cache_bytes=budget,
                  memory_bytes=budget)
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] <= 1.1 * peaks[0] + (16 << 20), [p >> 20 for p in peaks]
    # the data (6 MB), the model, the cache and group budgets, and a batch's activations
    assert peaks[1] <= 2 * budget + (256 << 20), [p >> 20 for p in peaks]
