"""The exact SAL search of every layer at once (``layer_sal(batched=True)``, the default on a GPU):
per batch the unperturbed stages run once, each layer's min and max copies branch off that shared
input, and every branched copy rides in one batch through the frozen stages; the same steps,
projections and evaluations as the per-layer search, in groups of layers that fit a memory budget.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from .sal_stages import _Chain, _round_order


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


def _one_step(chain: _Chain, y, group: list[str], b) -> None:
    """One SGD step's arithmetic of :func:`_exact_all_layers` on batch `b` (forward and backward of
    every copy of `group`), for timing it against the per-layer search."""
    starts = {n: chain.where[id(chain.params[n])] for n in group}
    order = sorted(group, key=lambda n: starts[n][0])
    w = {n: torch.stack([chain.params[n].detach()] * 2).requires_grad_(True) for n in order}
    with torch.enable_grad():
        losses, _ = _copy_losses(_branched_logits(chain, starts, order, w, b), y[b], len(order))
        torch.autograd.grad(losses.sum(), list(w.values()))


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
