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
- the model is split into stages (:func:`ulviz.models.model_stages`); the unperturbed stages
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
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from .config import check_numbers
from .devices import compute_device
from .errors import UlvizError, UnknownNameError
from .models import build_model, model_stages, weight_layer_names
from .steps import correct_count

ESTIMATORS = ("exact", "fast")
PARTS = ("sal", "s_max", "s_min", "acc_drop", "acc_rise")


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
              device=None, cache_bytes: int = 1 << 30, batched: bool | None = None,
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
    `memory_bytes` (default: half the GPU's free memory, 4 GB elsewhere). None = on a GPU, where the per-layer search is launch-bound;
    on the CPU the per-layer search with shared prefixes does less arithmetic and stays the default.
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
        batched = estimator == "exact" and device.type in BATCHED_DEVICES
    if (estimator == "exact" and not batched and device.type in CHANNELS_LAST_DEVICES and x.dim() == 4
            and any(isinstance(m, nn.Conv2d) for m in net.modules())):
        # oneDNN's convolutions and pooling are faster on NHWC (see CHANNELS_LAST_DEVICES). The model
        # only: a convolution with channels-last weights gives channels-last outputs from a batch
        # of the data as it is, so the data set is never copied (50,000 CIFAR images are 614 MB)
        net = net.to(memory_format=torch.channels_last)
    wanted = list(layers) if layers is not None else weight_layer_names(net)
    unknown = [n for n in wanted if n not in dict(net.named_parameters())]
    if unknown:
        raise UlvizError(f"not a parameter of the model: {', '.join(unknown)}")
    chain = _Chain(net, x, batch_size, cache_bytes)
    loss0, acc0 = chain.evaluate_unperturbed(y)
    search = _exact_search if estimator == "exact" else _fast_search
    settings = dict(iters=iters, lr_min=lr_min, lr_max=lr_max, eps=eps, shuffle=shuffle, seed=seed, steps=steps,
                    n_batches=n_batches)
    if batched and estimator == "exact":
        out = {}
        budget = memory_bytes or _default_budget(device)
        for group in _layer_groups(net, x[:1], wanted, 2 * min(batch_size, len(x)), budget):
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


def sal_arrays(records: dict[str, LayerSAL], layer_names: list[str]) -> dict[str, np.ndarray]:
    """The records as one array per part (sal, s_max, ...), in `layer_names` order."""
    return {p: np.array([getattr(records[n], p) for n in layer_names], dtype=np.float64) for p in PARTS}


def _record(loss0, acc0, min_loss, max_loss, acc_at_min, acc_at_max) -> LayerSAL:
    s_max, s_min = max_loss - loss0, loss0 - min_loss
    return LayerSAL(
        sal=s_max if abs(s_max) > abs(s_min) else s_min, s_max=s_max, s_min=s_min,
        acc_drop=acc0 - acc_at_max, acc_rise=acc_at_min - acc0, loss0=loss0, acc0=acc0,
    )


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys = zip(*((b[0], b[1]) for b in data))  # one pass, in the loader's order
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise UlvizError("data must be a DataLoader or an (X, Y) pair of tensors")
    if len(x) != len(y):
        raise UlvizError(f"data has {len(x)} inputs but {len(y)} labels")
    return x, y.long()


class _Chain:
    """The model as a chain of stages, with the unperturbed input of each stage computed once."""

    def __init__(self, net: nn.Module, x: torch.Tensor, batch_size: int, cache_bytes: int):
        self.stages = model_stages(net)
        self.n, self.batch_size, self.cache_bytes = len(x), batch_size, cache_bytes
        self.where = {}  # parameter object id -> (stage index, name inside the stage)
        for s, stage in enumerate(self.stages):
            for local, p in stage.named_parameters():
                self.where.setdefault(id(p), (s, local))
        self.params = dict(net.named_parameters())
        self._x = x
        self._cached = {0: x}  # stage index -> its input for all samples (when it fits the budget)

    def batches(self, order: torch.Tensor | None = None) -> list:
        idx = order if order is not None else torch.arange(self.n)
        return [idx[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]

    @torch.no_grad()
    def stage_input(self, s: int, b: torch.Tensor) -> torch.Tensor:
        """The input of stage `s` for the samples `b`, from the cache when it fits in memory,
        else computed from the nearest cached stage before it."""
        if s not in self._cached:
            self._fill_cache(s)
        if self._cached[s] is not None:
            return self._cached[s][b]
        k = self._source(s)
        h = self._cached[k][b]
        for stage in self.stages[k:s]:
            h = stage(h)
        return h

    def _source(self, s: int) -> int:
        """The highest stage below `s` whose input is held (0, the data, always is)."""
        return max(k for k, v in self._cached.items() if k < s and v is not None)

    @torch.no_grad()
    def _fill_cache(self, s: int) -> None:
        """Cache stage `s`'s input for all samples if it fits `cache_bytes` together with the
        cached input it is computed from; then drop every other cached stage input (the data
        excepted), so the cache never holds more than `cache_bytes`, however many stages."""
        k = self._source(s)
        src, batches = self._cached[k], self.batches()
        first = self._run(k, s, src[batches[0]])
        held = src.numel() * src.element_size() if k != 0 else 0
        if self.n * first[0].numel() * first.element_size() + held > self.cache_bytes:
            self._cached[s] = None  # too big to keep: recomputed per batch instead
            return
        channels_last = first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)
        out = torch.empty((self.n, *first.shape[1:]), dtype=first.dtype, device=first.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out[batches[0]] = first
        for b in batches[1:]:
            out[b] = self._run(k, s, src[b])
        for j in [j for j, v in self._cached.items() if j not in (0, s) and v is not None]:
            del self._cached[j]  # refilled on demand if a later layer needs it again
        self._cached[s] = out

    def _run(self, k: int, s: int, h: torch.Tensor) -> torch.Tensor:
        for stage in self.stages[k:s]:
            h = stage(h)
        return h

    @torch.no_grad()
    def evaluate_unperturbed(self, y: torch.Tensor) -> tuple[float, float]:
        total, correct = 0.0, 0
        for b in self.batches():
            out = self._x[b]
            for stage in self.stages:
                out = stage(out)
            total += F.cross_entropy(out, y[b]).item() * len(b)
            correct += correct_count(out, y[b]).item()
        return total / self.n, correct / self.n

    def suffix_for(self, name: str) -> "_Suffix":
        s, local = self.where[id(self.params[name])]
        return _Suffix(self, s, local, self.params[name].detach())


class _Suffix:
    """logits = f(w, batch): stage `s` with its weight `local` replaced by w, then the rest."""

    def __init__(self, chain: _Chain, s: int, local: str, w0: torch.Tensor):
        self.chain, self.s, self.local, self.w0 = chain, s, local, w0
        stage = chain.stages[s]
        self.frozen = {k: v.detach() for k, v in stage.named_parameters()}
        self.frozen.update({k: v for k, v in stage.named_buffers()})
        self.stage, self.rest = stage, chain.stages[s + 1:]

    def logits(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.local == "weight" and type(self.stage) in (nn.Linear, nn.Conv2d):
            # the common case (a Sequential's own layer), without functional_call's module swap
            out = self.stage._conv_forward(h, w, self.stage.bias) if isinstance(self.stage, nn.Conv2d) \
                else F.linear(h, w, self.stage.bias)
        else:
            out = functional_call(self.stage, {**self.frozen, self.local: w}, (h,))
        for stage in self.rest:
            out = stage(out)
        return out

    def loss(self, w, h, y):
        return F.cross_entropy(self.logits(w, h), y)

    def input(self, b):
        return self.chain.stage_input(self.s, b)


# devices where the two copies run as one vmapped call; on the CPU batching two copies saves
# nothing and vmap's conv rule costs extra (measured by benchmarks/sal_speed.py)
VMAP_DEVICES = {"cuda"}
# devices where every layer's copies advance together (layer_sal's `batched`): on the CPU the
# per-layer search, which reuses the unperturbed prefixes, does far less arithmetic (8x faster
# for a small cnn, measured side by side); on a GPU the per-layer search is launch-bound
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


def _round_order(chain: _Chain, st: dict, r: int) -> torch.Tensor | None:
    """The order of the data in search round `r`: reshuffled per round with the seed when
    `shuffle`, else None (as stored)."""
    if not st["shuffle"]:
        return None
    return torch.randperm(chain.n, generator=torch.Generator().manual_seed(st["seed"] * 7919 + r))


def _exact_search(suffix: _Suffix, chain: _Chain, y, loss0, acc0, st, _):
    w0 = suffix.w0
    w_min, w_max = w0.clone(), w0.clone()
    min_loss, max_loss, acc_at_min, acc_at_max = loss0, loss0, acc0, acc0
    for r in range(st["iters"]):
        for b in chain.batches(_round_order(chain, st, r)):
            h = suffix.input(b)
            g = _pair_grads(suffix, torch.stack([w_min, w_max]), h, y[b]).detach()  # no history kept
            w_min = w_min - st["lr_min"] * g[0]  # descent
            w_max = w_max + st["lr_max"] * g[1]  # ascent
        w_min, w_max = _project(w_min, w0, st["eps"]), _project(w_max, w0, st["eps"])
        (l_min, a_min), (l_max, a_max) = _evaluate_copies(suffix, [w_min, w_max], y)
        if l_min < min_loss:
            min_loss, acc_at_min = l_min, a_min
        if l_max > max_loss:
            max_loss, acc_at_max = l_max, a_max
    return min_loss, max_loss, acc_at_min, acc_at_max


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return 4 << 30


def _layer_groups(net: nn.Module, x1: torch.Tensor, names: list[str], batch: int, budget: int) -> list[list[str]]:
    """`names` in consecutive groups whose batched search fits `budget` bytes: per element (one
    copy of one layer) the group's weight offsets and their gradients, and the activations of a
    batch (measured on one sample, times three for the backward pass)."""
    params = dict(net.named_parameters())
    acts = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: acts.append(o.numel()) if torch.is_tensor(o) else None)
             for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(x1)
    finally:
        for h in hooks:
            h.remove()
    per_element_acts = 3 * sum(acts) * batch * x1.element_size()
    groups, current = [], []
    for name in names:
        trial = current + [name]
        weights = sum(params[n].numel() for n in trial) * x1.element_size() * 3
        if current and 2 * len(trial) * (weights + per_element_acts) > budget:
            groups.append(current)
            trial = [name]
        current = trial
    return groups + [current] if current else groups


def _exact_all_layers(chain: _Chain, y, group: list[str], loss0, acc0, st) -> dict[str, tuple]:
    """The exact search of every layer of `group` at once, with shared prefixes: per batch, the
    unperturbed stages run once; at the stage holding layer i its two copies (min, max) branch off
    that shared input, and from there on every branched copy rides in one batch (copies x samples)
    through the frozen stages. The loss is the sum of the copies' mean losses, so one backward
    gives each copy its own gradient, and it stops at each copy's layer (the shared input carries
    no graph, the parameters are frozen). The same SGD steps, projections and evaluations as
    :func:`_exact_search`, so the numbers are the per-layer search's."""
    starts = {n: chain.where[id(chain.params[n])] for n in group}  # name -> (stage, name inside it)
    order = sorted(group, key=lambda n: starts[n][0])  # the rows of the copies, in order of branching
    w0 = {n: chain.params[n].detach() for n in order}
    w = {n: torch.stack([w0[n], w0[n]]) for n in order}  # [min copy, max copy] of each layer
    sign = {n: torch.tensor([-st["lr_min"], st["lr_max"]], dtype=w0[n].dtype, device=w0[n].device)
            .view(2, *[1] * w0[n].dim()) for n in order}
    best = {n: [loss0, loss0, acc0, acc0] for n in group}  # min_loss, max_loss, acc_at_min, acc_at_max
    for r in range(st["iters"]):
        for b in chain.batches(_round_order(chain, st, r)):
            leaves = [w[n].requires_grad_(True) for n in order]
            with torch.enable_grad():
                losses, _ = _copy_losses(_branched_logits(chain, starts, order, w, b), y[b], len(order))
                grads = torch.autograd.grad(losses.sum(), leaves)
            with torch.no_grad():  # descent for the min copy, ascent for the max copy
                w = {n: w[n].detach() + sign[n] * g for n, g in zip(order, grads)}
        with torch.no_grad():
            w = {n: _project_pair(w[n], w0[n], st["eps"]) for n in order}
            totals, correct = _evaluate_branched(chain, starts, order, w, y)
        for i, n in enumerate(order):
            if totals[2 * i] < best[n][0]:
                best[n][0], best[n][2] = totals[2 * i], correct[2 * i]
            if totals[2 * i + 1] > best[n][1]:
                best[n][1], best[n][3] = totals[2 * i + 1], correct[2 * i + 1]
    return {n: tuple(v) for n, v in best.items()}


def _project_pair(w: torch.Tensor, w0: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`_project` of both copies, without a host round trip per copy."""
    diff = w - w0
    ratio = (torch.linalg.norm(diff.flatten(1), dim=1) / torch.linalg.norm(w0)).view(2, *[1] * w0.dim())
    return torch.where(ratio > eps, w0 + diff / ratio * eps, w)


def _branched_logits(chain: _Chain, starts: dict, order: list[str], w: dict, b) -> torch.Tensor:
    """Logits of every copy on batch `b`, (copies x samples, classes, ...), rows in `order`."""
    h = chain.stage_input(0, b)
    last = max(starts[n][0] for n in order)
    carried = None  # activations of the copies branched so far, copies folded into the batch
    for s, stage in enumerate(chain.stages):
        parts = [stage(carried)] if carried is not None else []
        parts += [_pair_through_stage(stage, starts[n][1], w[n], h).flatten(0, 1) for n in order if starts[n][0] == s]
        if parts:
            carried = torch.cat(parts) if len(parts) > 1 else parts[0]
        if s < last:
            with torch.no_grad():  # the unperturbed input of the next stage, shared by the copies branching there
                h = stage(h)
    return carried


def _pair_through_stage(stage: nn.Module, local: str, w2: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Stage output (2, samples, ...) with its parameter `local` replaced by each of the two copies
    in `w2`, on the shared input `h`."""
    if local == "weight" and type(stage) in (nn.Conv2d, nn.Linear):
        # one call with twice the output channels: the two copies' outputs side by side
        bias = stage.bias.repeat(2) if stage.bias is not None else None
        out = stage._conv_forward(h, w2.flatten(0, 1), bias) if isinstance(stage, nn.Conv2d) \
            else F.linear(h, w2.flatten(0, 1), bias)
        return out.unflatten(1, (2, -1)).transpose(0, 1)
    return vmap(lambda wi: functional_call(stage, {local: wi}, (h,)))(w2)


def _copy_losses(logits: torch.Tensor, yb: torch.Tensor, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, correct count) of each copy from branched logits: copies x samples rows."""
    k = 2 * layers
    yk = yb.repeat(k, *[1] * (yb.dim() - 1))
    losses = F.cross_entropy(logits, yk, reduction="none").view(k, -1).mean(1)
    hits = (logits.argmax(1) == yk).to(logits.dtype).view(k, len(yb), -1).mean(2).sum(1)
    return losses, hits


def _evaluate_branched(chain: _Chain, starts: dict, order: list[str], w: dict, y) -> tuple[list, list]:
    """Loss and accuracy of every copy on all the data; summed on the device, one host round trip."""
    k = 2 * len(order)
    totals = torch.zeros(k, dtype=torch.float64, device=y.device)
    correct = torch.zeros(k, dtype=torch.float64, device=y.device)
    for b in chain.batches():
        losses, hits = _copy_losses(_branched_logits(chain, starts, order, w, b), y[b], len(order))
        totals += losses.double() * len(b)
        correct += hits.double()
    return (totals / chain.n).tolist(), (correct / chain.n).tolist()


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
    min_loss, max_loss, acc_at_min, acc_at_max = loss0, loss0, acc0, acc0
    for k in range(st["steps"]):
        if k > 0:
            g_min, g_max = _full_gradient(suffix, w_min, y), _full_gradient(suffix, w_max, y)
        w_min = _project(w_min - st["lr_min"] * travel * g_min, w0, st["eps"])
        w_max = _project(w_max + st["lr_max"] * travel * g_max, w0, st["eps"])
        (l_min, a_min), (l_max, a_max) = _evaluate_copies(suffix, [w_min, w_max], y)
        if l_min < min_loss:
            min_loss, acc_at_min = l_min, a_min
        if l_max > max_loss:
            max_loss, acc_at_max = l_max, a_max
    return min_loss, max_loss, acc_at_min, acc_at_max


def plain_loop_sal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, iters=10, lr_min=0.1, lr_max=0.1,
                   eps=0.05, batch_size=256) -> dict[str, LayerSAL]:
    """The paper's script, structure for structure: per layer, two deep copies, an SGD optimizer
    on that one tensor, full forward and backward passes. The reference `exact` is checked and
    timed against (benchmarks/sal_speed.py); use :func:`layer_sal` otherwise."""
    base = copy.deepcopy(model).eval()
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]

    @torch.no_grad()
    def evaluate(m):
        loss = sum(F.cross_entropy(m(xb), yb).item() * len(xb) for xb, yb in batches)
        acc = sum(correct_count(m(xb), yb).item() for xb, yb in batches)
        return loss / len(x), acc / len(x)

    loss0, acc0 = evaluate(base)
    out = {}
    for name in weight_layer_names(base):
        copies = {}
        for kind, lr in (("min", lr_min), ("max", lr_max)):
            m = copy.deepcopy(base)
            for n, p in m.named_parameters():
                p.requires_grad_(n == name)
            w = dict(m.named_parameters())[name]
            copies[kind] = (m, w, w.detach().clone(), torch.optim.SGD([w], lr=lr))
        min_loss = max_loss = loss0
        acc_at_min = acc_at_max = acc0
        for _ in range(iters):
            for kind, sign in (("min", 1.0), ("max", -1.0)):
                m, w, w0, opt = copies[kind]
                for xb, yb in batches:
                    opt.zero_grad()
                    (sign * F.cross_entropy(m(xb), yb)).backward()
                    opt.step()
                with torch.no_grad():
                    ratio = torch.linalg.norm(w - w0) / torch.linalg.norm(w0)
                    if ratio > eps:
                        w.copy_(w0 + (w - w0) / ratio * eps)
            l_min, a_min = evaluate(copies["min"][0])
            l_max, a_max = evaluate(copies["max"][0])
            if l_min < min_loss:
                min_loss, acc_at_min = l_min, a_min
            if l_max > max_loss:
                max_loss, acc_at_max = l_max, a_max
        out[name] = _record(loss0, acc0, min_loss, max_loss, acc_at_min, acc_at_max)
    return out


# -- runs -------------------------------------------------------------------------------------

def sal_data(dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The data SAL is measured on: "train" = what the run trained on (maybe protected), "test" = clean test."""
    if split == "train":
        return dataset.x_train, dataset.y_train
    if split == "test":
        return dataset.x_test, dataset.y_test
    raise UlvizError(f"SAL split must be 'train' or 'test', got {split!r}")


FAST_SUBSET = 1024  # samples the fast estimator uses when no subset is given


def describe_sal(settings: dict, epochs) -> str:
    """One line saying how a run's stored SAL was computed (for captions): estimator, samples,
    radius, rounds and the epochs measured."""
    if not settings:
        return "no SAL stored"
    epochs = [int(e) for e in epochs]
    subset = settings.get("subset") or (FAST_SUBSET if settings.get("estimator") == "fast" else None)
    data = "the clean test set" if settings.get("split") == "test" else "the data the run trained on"
    samples = f"the first {subset} samples of {data}" if subset else f"all of {data}"
    if len(epochs) > 2 and all(b - a == epochs[1] - epochs[0] for a, b in zip(epochs, epochs[1:])):
        step = epochs[1] - epochs[0]
        when = f"epochs {epochs[0]}-{epochs[-1]}" + (f", every {step}" if step > 1 else ", every epoch")
    else:
        when = "epoch" + ("s " if len(epochs) != 1 else " ") + ", ".join(map(str, epochs))
    return (f"{settings.get('estimator', '?')} SAL on {samples}, radius {settings.get('eps', '?')} of each layer's "
            f"norm, {settings.get('iters', '?')} rounds, at {when}")


def sal_kwargs(config) -> dict:
    """layer_sal keyword arguments from a :class:`ulviz.config.SALConfig`."""
    return dict(estimator=config.estimator, iters=config.iters, lr_min=config.lr_min, lr_max=config.lr_max,
                eps=config.eps, batch_size=config.batch_size, shuffle=config.shuffle, seed=config.seed,
                subset=config.subset)


def sal_callback(config):
    """A training callback that appends every trained epoch's SAL to the run file."""
    def callback(ctx) -> None:
        if ctx.epoch == 0 or config.estimator == "none":
            return  # the paper measures SAL after each epoch of training
        records = layer_sal(ctx.model, sal_data(ctx.dataset, config.split), device=ctx.device, **sal_kwargs(config))
        if ctx.writer is not None:
            ctx.writer.append_sal(ctx.epoch, sal_arrays(records, weight_layer_names(ctx.model)))
    return callback


def compute_run_sal(path, config, *, device=None, progress: Callable[[int, int], None] | None = None,
                    epochs: Iterable[int] | None = None):
    """Compute SAL for every stored epoch of a run file (or only `epochs`) from its snapshots,
    with `config` (a SALConfig), skipping epochs already computed with the same settings. Returns
    the run. UD averages over the epochs that have SAL, so a few spread epochs give a cheaper,
    coarser estimate of the same quantity."""
    from .data import load_dataset
    from .store import append_sal_row, open_run, prepare_sal
    from .trainset import run_training_data

    if config.estimator not in ESTIMATORS:
        raise UnknownNameError("SAL estimator", config.estimator, list(ESTIMATORS))
    check_numbers(config)
    run = open_run(path)
    # what the run trained on, in its task (SAL measures the task's loss: rotations, masks, ...)
    dataset = run_training_data(run, load_dataset(run.config.data), protected=config.split == "train")
    data = sal_data(dataset, config.split)
    model = build_model(run.config, dataset)
    layers = weight_layer_names(model)
    done = set(prepare_sal(path, layers, asdict(config)))
    wanted = range(1, run.epochs_done + 1) if epochs is None else sorted(set(epochs))
    missing = [e for e in wanted if not 1 <= e <= run.epochs_done]
    if missing:
        raise UlvizError(f"{path}: no trained epoch {missing[0]} (it has epochs 1..{run.epochs_done})")
    todo = [e for e in wanted if e not in done]
    for i, epoch in enumerate(todo):
        model.load_state_dict(run.snapshot(epoch))
        records = layer_sal(model, data, device=device, **sal_kwargs(config))
        append_sal_row(path, epoch, sal_arrays(records, layers))
        if progress:
            progress(i + 1, len(todo))
    return open_run(path)
