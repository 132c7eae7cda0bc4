"""The paper's SAL script, structure for structure (per layer two deep copies, an SGD optimizer on
that one tensor, full forward and backward passes): the reference :func:`ulviz.measure.sal.layer_sal`
is checked and timed against.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ..models.registry import weight_layer_names
from ..models.steps import correct_count
from .sal import LayerSAL, _record


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
