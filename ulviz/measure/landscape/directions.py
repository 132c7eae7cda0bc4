"""Directions in weight space: random ones (filter, layer or no normalization; one layer's only),
the line between two weight states, and a model's weights as a direction-shaped dict.
"""
from __future__ import annotations

import torch
from torch import nn

from ...core.errors import UlvizError, UnknownNameError


NORMALIZATIONS = ("filter", "layer", "none")
Direction = dict[str, torch.Tensor]  # parameter name -> tensor of its shape (zeros where left out)


# -- directions -----------------------------------------------------------------------------

def random_direction(model: nn.Module, *, normalization: str = "filter", seed: int = 0, keep_biasbn: bool = False,
                     layer: str | None = None, state: Direction | None = None) -> Direction:
    """A Gaussian direction shaped like the model's parameters, normalized against the weights.

    "filter": each filter (a slice along the first dimension of a weight: a conv filter, a row of a
    linear layer) is rescaled to the norm of the matching filter of the weights; "layer": each
    tensor to the norm of its weights; "none": left as drawn. One-dimensional tensors (biases,
    batch-norm scales and shifts) are zero unless `keep_biasbn`, then rescaled as a whole. With
    `layer`, every tensor but that one is zero. `state` gives the weights to normalize against
    (the model's own by default); the draw depends only on `seed` and the shapes.
    """
    if normalization not in NORMALIZATIONS:
        raise UnknownNameError("normalization", normalization, list(NORMALIZATIONS))
    weights = _params(model, state)
    if layer is not None and layer not in weights:
        raise UlvizError(f"not a parameter of the model: {layer!r} (parameters: {', '.join(weights)})")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)  # drawn for every tensor: same seed, same d
        left_out = (layer is not None and name != layer) or (w.dim() <= 1 and not keep_biasbn)
        out[name] = torch.zeros_like(w) if left_out else _normalized(d, w.double().cpu(), normalization).to(w.dtype)
    return out


def _normalized(d: torch.Tensor, w: torch.Tensor, normalization: str) -> torch.Tensor:
    if normalization == "none":
        return d
    if normalization == "layer" or w.dim() <= 1:
        return d * (w.norm() / d.norm().clamp_min(1e-12))
    dn = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    wn = w.flatten(1).norm(dim=1)
    return d * (wn / dn).reshape(-1, *[1] * (d.dim() - 1))


def difference_direction(a: Direction, b: Direction) -> Direction:
    """b - a for two states of the same parameters (the line from a to b)."""
    if set(a) != set(b) or any(a[n].shape != b[n].shape for n in a):
        raise UlvizError("the two weight states do not have the same parameters and shapes")
    return {n: (b[n].double() - a[n].double()).to(a[n].dtype) for n in a}


def _params(model: nn.Module, state: Direction | None = None) -> Direction:
    own = {n: p.detach().cpu() for n, p in model.named_parameters()}
    if state is None:
        return own
    missing = [n for n in own if n not in state]
    if missing:
        raise UlvizError(f"the weight state lacks parameters: {', '.join(missing[:5])}")
    return {n: state[n].detach().cpu().to(own[n].dtype) for n in own}
