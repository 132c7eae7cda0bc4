"""Sharpness-Aware Learnability (SAL) of every Conv/Linear weight tensor.

For one weight tensor W (everything else frozen, model in eval mode) with L0 the loss on the
chosen data, the paper's search (Ye, Su & Qian, ICLR 2025) runs two copies of W for `iters`
rounds: the min copy takes one pass of SGD descent over the data, the max copy one pass of
ascent; after each pass a copy is projected back into the ball ||W - W0|| <= eps * ||W0||; both
are then evaluated on the data, keeping the lowest loss of the min copy and the highest of the
max copy (both start at L0)::

    s_max = max_loss - L0        s_min = L0 - min_loss        SAL = the larger in magnitude

and likewise the accuracy lost by the max copy (acc_drop) and gained by the min copy (acc_rise),
taken at the rounds where those losses were reached. Accuracies here are fractions in [0, 1]
(the original script logs percentage points).

How this differs from a plain per-layer loop, with the same numbers when shuffle is off:
- the model is split into stages (:func:`ulviz.models.registry.model_stages`); the unperturbed stages
  before a layer run once over the data for *all* layers, and every pass and evaluation of that
  layer's search starts from their cached output;
- the min and max copies share each batch (and its cached input) and, on a GPU, run as one
  batched call with ``torch.func.vmap``;
- the caller's model is never modified: perturbed weights go through
  ``torch.func.functional_call``.

Baseline: L0 and acc0 are measured in eval mode on the same data the search uses. The original
script passes the *train-mode running loss* of the epoch just trained instead (an average over
batches while the weights were still moving, with dropout/batch-norm in training mode), so its
s_max and s_min are offset by the gap between that running loss and the model's actual loss;
measuring L0 the way every copy is measured removes that offset.

The `fast` estimator replaces the search by normalized-gradient steps to the ball's boundary on a
fixed subset, the first step's gradients for all layers coming from one backward pass; its
fidelity to `exact` is measured by ``benchmarks/sal_speed.py``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from ..core.devices import compute_device
from ..core.errors import UlvizError, UnknownNameError
from ..models.registry import weight_layer_names
from ..models.steps import correct_count
from .sal_batched import _default_budget, _exact_all_layers, _layer_groups, _one_step
from .sal_stages import _Chain, _Suffix, _round_order, _tensors

ESTIMATORS = ("exact", "fast")
PARTS = ("sal", "s_max", "s_min", "acc_drop", "acc_rise")
FAST_SUBSET = 1024  # samples the fast estimator uses when no subset is given


@dataclass(frozen=True)
class LayerSAL:
    """The SAL of one weight tensor."""

    sal: float  # s_max if |s_max| > |s_min| else s_min
    s_max: float  # highest loss found in the ball minus L0 (>= 0)
    s_min: float  # L0 minus the lowest loss found in the ball (>= 0)
    acc_drop: float  # acc0 minus the accuracy where the highest loss was found
    acc_rise: float  # accuracy where the lowest loss was found minus acc0
    loss0: float  # L0: the unperturbed model's loss on the data
    acc0: float  # the unperturbed model's accuracy on the data


def layer_sal(model: nn.Module, data, *, estimator: str = "exact", iters: int = 10, lr_min: float = 0.1,
              lr_max: float = 0.1, eps: float = 0.05, batch_size: int = 256, shuffle: bool = False,
              seed: int = 0, subset: int | None = None, steps: int = 1, layers: Iterable[str] | None = None,
              device=None, cache_bytes: int = 1 << 30, batched: bool | str | None = None,
              memory_bytes: int | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, LayerSAL]:
    """SAL of each Conv/Linear weight of `model` on `data` (a DataLoader or an (X, Y) pair).

    Returns one :class:`LayerSAL` per weight tensor, keyed by its name in
    ``model.named_parameters()``. `estimator` is "exact" (the paper's search: `iters` rounds,
    step sizes `lr_min`/`lr_max`) or "fast" (`steps` normalized-gradient steps to the boundary,
    on the first `subset` samples, 1024 by default). `shuffle` reshuffles the data each round
    with `seed`. `cache_bytes` bounds the memory of the cached stage outputs (past it, the stages
    before a layer are recomputed per batch). `progress(done, total)` is called per layer.

    `batched` (exact only) advances the min and max copies of *every* layer together: one
    vmapped functional call per batch instead of two per layer, in groups of layers that fit
    `memory_bytes` (default: half the GPU's free memory, 4 GB elsewhere). "measure" times one SGD
    step of each path on the first batch (after a warm-up) and runs the cheaper: batching wins
    where the per-layer search is launch-bound (small widths on a GPU), the per-layer search where
    arithmetic dominates. None = "measure" on a GPU; on the CPU the per-layer search, which was the
    cheaper in every case measured there (benchmarks/results/sal-cpu-*.md), so that the CPU's
    numbers never depend on a timing. Both paths give the same numbers to float rounding.
    """
    if estimator not in ESTIMATORS:
        raise UnknownNameError("SAL estimator", estimator, list(ESTIMATORS))
    if eps <= 0 or iters < 1 or steps < 1 or batch_size < 1 or not (lr_min > 0 and lr_max > 0):
        # a step size of 0 or less would turn the descent copy uphill (or the ascent copy down)
        # and give a wrong SAL without any other sign
        raise UlvizError("SAL needs eps > 0, lr_min > 0, lr_max > 0, iters >= 1, steps >= 1 and batch_size >= 1")
    device = compute_device(device)
    # our own copy: the caller's model keeps its device, mode and weights whatever happens here
    net = copy.deepcopy(model).to(device).eval()
    # frozen: every search differentiates w.r.t. its own leaf copy of one weight only. With the
    # copy's parameters requiring grad, torch.func.grad's result stays differentiable w.r.t. them,
    # so `w - lr * g` chained every batch's graph (and its saved activations) into the search's
    # weights: the per-layer path on CUDA grew by a pass's activations per round (issue 26)
    net.requires_grad_(False)
    dtype = next(net.parameters()).dtype
    x, y = _tensors(data)
    n_batches = -(-min(len(x), subset or len(x)) // batch_size)  # the exact search's SGD steps per pass
    if estimator == "fast" and subset is None:
        subset = FAST_SUBSET
    if subset is not None:
        x, y = x[:subset], y[:subset]
    if len(x) == 0:
        raise UlvizError("SAL needs at least one sample")
    x, y = x.to(device, dtype), y.to(device)
    if batched is None:
        batched = "measure" if estimator == "exact" and device.type in BATCHED_DEVICES else False
    if batched not in (True, False, "measure"):
        raise UlvizError(f"batched must be True, False, 'measure' or None, not {batched!r}")
    batched = batched if estimator == "exact" else False
    wanted = list(layers) if layers is not None else weight_layer_names(net)
    unknown = [n for n in wanted if n not in dict(net.named_parameters())]
    if unknown:
        raise UlvizError(f"not a parameter of the model: {', '.join(unknown)}")
    chain = _Chain(net, x, batch_size, cache_bytes)
    budget = memory_bytes or _default_budget(device)
    groups = _layer_groups(net, x[:1], wanted, 2 * min(batch_size, len(x)), budget) if batched else []
    if batched == "measure":
        per_layer, all_layers = measured_step_costs(chain, y, wanted, groups)
        batched = all_layers < per_layer
    if (not batched and estimator == "exact" and device.type in CHANNELS_LAST_DEVICES and x.dim() == 4
            and any(isinstance(m, nn.Conv2d) for m in net.modules())):
        # oneDNN's convolutions and pooling are faster on NHWC (see CHANNELS_LAST_DEVICES). The model
        # only, in place (the chain holds its stages): a convolution with channels-last weights gives
        # channels-last outputs from a batch of the data as it is, so the data set is never copied
        # (50,000 CIFAR images are 614 MB)
        net.to(memory_format=torch.channels_last)
    loss0, acc0 = chain.evaluate_unperturbed(y)
    search = _exact_search if estimator == "exact" else _fast_search
    settings = dict(iters=iters, lr_min=lr_min, lr_max=lr_max, eps=eps, shuffle=shuffle, seed=seed, steps=steps,
                    n_batches=n_batches)
    if batched:
        out = {}
        for group in groups:
            best = _exact_all_layers(chain, y, group, loss0, acc0, settings)
            out.update({name: _record(loss0, acc0, *best[name]) for name in group})
            if progress:
                progress(len(out), len(wanted))
        return {name: out[name] for name in wanted}
    out: dict[str, LayerSAL] = {}
    fast_grads = _all_gradients(net, x, y, batch_size, wanted) if estimator == "fast" else None
    for i, name in enumerate(wanted):
        suffix = chain.suffix_for(name)
        best = search(suffix, chain, y, loss0, acc0, settings, fast_grads[name] if fast_grads else None)
        out[name] = _record(loss0, acc0, *best)
        if progress:
            progress(i + 1, len(wanted))
    return out


def measured_step_costs(chain: _Chain, y, wanted: list[str], groups: list[list[str]]) -> tuple[float, float]:
    """(per-layer, batched) seconds of one SGD step of the exact search on the first batch: the
    two copies' gradients layer by layer, and every group's branched forward and backward. Each is
    run once to warm up (kernel loading, the stage cache) and then timed, synchronised on a GPU."""
    b = chain.batches()[0]
    device = y.device

    def per_layer():
        for name in wanted:
            suffix = chain.suffix_for(name)
            _pair_grads(suffix, torch.stack([suffix.w0, suffix.w0]), suffix.input(b), y[b])

    def all_layers():
        for group in groups:
            _one_step(chain, y, group, b)

    costs = []
    for step in (per_layer, all_layers):
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        costs.append(time.perf_counter() - start)
    return costs[0], costs[1]


def sal_arrays(records: dict[str, LayerSAL], layer_names: list[str]) -> dict[str, np.ndarray]:
    """The records as one array per part (sal, s_max, ...), in `layer_names` order."""
    return {p: np.array([getattr(records[n], p) for n in layer_names], dtype=np.float64) for p in PARTS}


def _record(loss0, acc0, min_loss, max_loss, acc_at_min, acc_at_max) -> LayerSAL:
    s_max, s_min = max_loss - loss0, loss0 - min_loss
    return LayerSAL(
        sal=s_max if abs(s_max) > abs(s_min) else s_min, s_max=s_max, s_min=s_min,
        acc_drop=acc0 - acc_at_max, acc_rise=acc_at_min - acc0, loss0=loss0, acc0=acc0,
    )


# devices where the two copies run as one vmapped call; on the CPU batching two copies saves
# nothing and vmap's conv rule costs extra (measured by benchmarks/sal_speed.py)
VMAP_DEVICES = {"cuda"}
# devices where layer_sal chooses its path by a timed step (`batched` None -> "measure"): on a GPU
# the per-layer search is launch-bound at small widths (resnet18 w16 on an H200: batched 5.8x the
# plain loop) while at full width the arithmetic decides. Elsewhere the per-layer search, which
# reuses the unperturbed prefixes: on the CPU it was the cheaper in every case measured (cnn on
# 1024 CIFAR images: 156 s vs 273 s batched), and a timed choice would make the CPU's numbers
# depend, at float rounding, on the machine's load
BATCHED_DEVICES = {"cuda"}
# devices where the per-layer exact search runs the model and data channels-last (NHWC) when the
# model has convolutions: the CPU, where oneDNN's convolutions and max pooling are faster on NHWC
# (cnn, 256 CIFAR images, 2 cores: 1.20-1.33x, the same SAL to 6 digits, side by side). Not CUDA:
# there the copies go through vmap, and batch norm inside vmap refuses channels-last inputs (torch
# 2.11, an H200: "NYI: querying is_contiguous inside of vmap"); tests/test_gpu.py caught it. Nor
# the batched search anywhere, for the same reason.
CHANNELS_LAST_DEVICES = {"cpu"}


def _pair_grads(suffix: _Suffix, w_pair: torch.Tensor, h, y) -> torch.Tensor:
    """Gradients of the batch loss for two copies of W at once."""
    if w_pair.device.type in VMAP_DEVICES:
        return vmap(grad(suffix.loss), in_dims=(0, None, None))(w_pair, h, y)
    return torch.stack([_grad(suffix, w, h, y) for w in w_pair])


def _grad(suffix: _Suffix, w: torch.Tensor, h, y) -> torch.Tensor:
    """d loss / d w by plain autograd on a leaf copy of w (less overhead than torch.func.grad)."""
    w = w.detach().requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(suffix.loss(w, h, y), w)
    return g


@torch.no_grad()
def _evaluate_copies(suffix: _Suffix, ws: list[torch.Tensor], y) -> list[tuple[float, float]]:
    """(loss, accuracy) of each weight in `ws` on all the data, sharing each batch's input."""
    totals = [[0.0, 0] for _ in ws]
    for b in suffix.chain.batches():
        h = suffix.input(b)
        for acc, w in zip(totals, ws):
            out = suffix.logits(w, h)
            acc[0] += F.cross_entropy(out, y[b]).item() * len(b)
            acc[1] += correct_count(out, y[b]).item()
    n = suffix.chain.n
    return [(t / n, c / n) for t, c in totals]


def _project(w: torch.Tensor, w0: torch.Tensor, eps: float) -> torch.Tensor:
    """w pulled back onto the ball ||w - w0|| <= eps ||w0|| (along w - w0) if it left it."""
    diff = w - w0
    ratio = torch.linalg.norm(diff) / torch.linalg.norm(w0)
    return w0 + diff / ratio * eps if ratio > eps else w


def _improved(best: tuple, at_min: tuple, at_max: tuple) -> tuple:
    """(min_loss, max_loss, acc_at_min, acc_at_max) after one evaluation of the descent copy
    (`at_min` = its loss, accuracy) and the ascent copy: the lowest and highest loss seen so far,
    each with the accuracy where it was seen."""
    min_loss, max_loss, acc_at_min, acc_at_max = best
    if at_min[0] < min_loss:
        min_loss, acc_at_min = at_min
    if at_max[0] > max_loss:
        max_loss, acc_at_max = at_max
    return min_loss, max_loss, acc_at_min, acc_at_max


def _exact_search(suffix: _Suffix, chain: _Chain, y, loss0, acc0, st, _):
    w0 = suffix.w0
    w_min, w_max = w0.clone(), w0.clone()
    best = (loss0, loss0, acc0, acc0)  # min_loss, max_loss, acc_at_min, acc_at_max
    for r in range(st["iters"]):
        for b in chain.batches(_round_order(chain, st, r)):
            h = suffix.input(b)
            g = _pair_grads(suffix, torch.stack([w_min, w_max]), h, y[b]).detach()  # no history kept
            w_min = w_min - st["lr_min"] * g[0]  # descent
            w_max = w_max + st["lr_max"] * g[1]  # ascent
        w_min, w_max = _project(w_min, w0, st["eps"]), _project(w_max, w0, st["eps"])
        best = _improved(best, *_evaluate_copies(suffix, [w_min, w_max], y))
    return best


def _all_gradients(net: nn.Module, x, y, batch_size: int, names: list[str]) -> dict[str, torch.Tensor]:
    """Gradient of the mean loss on (x, y) for every named weight: one backward pass per batch."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = dict(net.named_buffers())

    def loss(ws, xb, yb):
        return F.cross_entropy(functional_call(net, {**params, **buffers, **ws}, (xb,)), yb)

    total = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        g = grad(loss)({n: params[n] for n in names}, xb, yb)
        for n in names:
            total[n] += g[n] * (len(xb) / len(x))
    return total


def _full_gradient(suffix: _Suffix, w, y) -> torch.Tensor:
    g = torch.zeros_like(w)
    for b in suffix.chain.batches():
        g += _grad(suffix, w, suffix.input(b), y[b]) * (len(b) / suffix.chain.n)
    return g


def _fast_search(suffix: _Suffix, chain: _Chain, y, loss0, acc0, st, g0):
    """The exact search linearized: its whole travel (`iters` passes of `n_batches` SGD steps of
    size lr) taken as `steps` steps along the gradient at the current point, each projected onto
    the ball and evaluated, keeping the best point. The first gradient is shared by all layers."""
    w0 = suffix.w0
    travel = st["iters"] * st["n_batches"] / st["steps"]  # SGD steps each fast step stands for
    w_min, w_max = w0.clone(), w0.clone()
    g_min = g_max = g0
    best = (loss0, loss0, acc0, acc0)  # min_loss, max_loss, acc_at_min, acc_at_max
    for k in range(st["steps"]):
        if k > 0:
            g_min, g_max = _full_gradient(suffix, w_min, y), _full_gradient(suffix, w_max, y)
        w_min = _project(w_min - st["lr_min"] * travel * g_min, w0, st["eps"])
        w_max = _project(w_max + st["lr_max"] * travel * g_max, w0, st["eps"])
        best = _improved(best, *_evaluate_copies(suffix, [w_min, w_max], y))
    return best

