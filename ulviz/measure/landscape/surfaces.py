"""Lines and planes of a model: the public entry points (:func:`plane`, :func:`line`,
:func:`interpolation`), the grid and its coarse-first order, and the :class:`Landscape` they return.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ...core.devices import compute_device
from ...core.errors import UlvizError
from .directions import Direction, _params, difference_direction, random_direction
from .evaluation import _Evaluator


@dataclass
class Landscape:
    """Loss and accuracy on a line (1-D) or a plane (2-D) of weight space."""

    coords: list[np.ndarray]  # one coordinate axis per direction (alphas, and betas for a plane)
    loss: np.ndarray  # mean cross-entropy, shape (len(alphas),) or (len(alphas), len(betas))
    acc: np.ndarray  # accuracy in [0, 1], same shape
    directions: list[Direction] = field(repr=False)  # the directions used (on the CPU)
    settings: dict = field(default_factory=dict)  # how it was made (kind, normalization, seed, ...)

    @property
    def is_plane(self) -> bool:
        return len(self.coords) == 2


# -- public entry points --------------------------------------------------------------------

def plane(model: nn.Module, data, *, resolution: int = 41, span: float | tuple[float, float] = 1.0,
          normalization: str = "filter", seed: int = 0, batch_size: int | None = None, device=None,
          directions: Sequence[Direction] | None = None, keep_biasbn: bool = False, layer: str | None = None,
          origin: Direction | None = None, coarse: int | None = None, memory_bytes: int | None = None,
          known=None, on_points: Callable | None = None) -> Landscape:
    """Loss and accuracy on a `resolution` x `resolution` grid around the model's weights.

    `data` is a DataLoader or an (X, Y) pair. The axes run over `span` ((-span, span) or a
    (low, high) pair) along two directions: random ones (`normalization`, `seed`, `keep_biasbn`,
    `layer`) unless `directions` are given. `origin` replaces the model's own weights as the
    centre. `coarse` evaluates a sub-grid of that resolution first (see :func:`grid_order`).
    `known` (loss, acc, done) arrays skip finished points; `on_points(index, loss, acc)` is called
    after every chunk, so callers can cache and report progress.
    """
    dirs = list(directions) if directions is not None else [
        random_direction(model, normalization=normalization, seed=seed + i, keep_biasbn=keep_biasbn, layer=layer,
                         state=origin) for i in range(2)]
    if len(dirs) != 2:
        raise UlvizError("a plane needs two directions")
    axis = _axis(resolution, span)
    return _surface(model, data, dirs, [axis, axis], origin, batch_size, device, memory_bytes, coarse, known,
                    on_points, dict(kind="plane", resolution=resolution, span=_span(span), normalization=normalization,
                                    seed=seed, keep_biasbn=keep_biasbn, layer=layer))


def line(model: nn.Module, data, *, resolution: int = 41, span: float | tuple[float, float] = 1.0,
         normalization: str = "filter", seed: int = 0, batch_size: int | None = None, device=None,
         direction: Direction | None = None, keep_biasbn: bool = False, layer: str | None = None,
         origin: Direction | None = None, memory_bytes: int | None = None, known=None,
         on_points: Callable | None = None) -> Landscape:
    """Loss and accuracy at `resolution` points θ + α·d, α over `span`; arguments as :func:`plane`."""
    d = direction if direction is not None else random_direction(
        model, normalization=normalization, seed=seed, keep_biasbn=keep_biasbn, layer=layer, state=origin)
    return _surface(model, data, [d], [_axis(resolution, span)], origin, batch_size, device, memory_bytes, None,
                    known, on_points, dict(kind="line", resolution=resolution, span=_span(span),
                                           normalization=normalization, seed=seed, keep_biasbn=keep_biasbn, layer=layer))


def interpolation(model: nn.Module, data, start: Direction, end: Direction, *, resolution: int = 41,
                  span: tuple[float, float] = (-0.5, 1.5), batch_size: int | None = None, device=None,
                  memory_bytes: int | None = None, known=None, on_points: Callable | None = None) -> Landscape:
    """The straight line (1 - α)·start + α·end between two weight states of `model`'s architecture
    (α = 0 is `start`, α = 1 is `end`); buffers come from `model`."""
    start_p, end_p = _params(model, start), _params(model, end)
    return _surface(model, data, [difference_direction(start_p, end_p)], [_axis(resolution, span)], start_p,
                    batch_size, device, memory_bytes, None, known, on_points,
                    dict(kind="interp", resolution=resolution, span=_span(span)))


def grid_order(resolution: int, coarse: int | None) -> np.ndarray:
    """Flat indices of a resolution x resolution grid, the `coarse` x `coarse` sub-grid first.

    The sub-grid takes every k-th row and column, k = (resolution - 1) / (coarse - 1), so its
    points are points of the full grid and nothing is computed twice."""
    idx = np.arange(resolution * resolution)
    if not coarse or coarse >= resolution:
        return idx
    if coarse < 2 or (resolution - 1) % (coarse - 1):
        raise UlvizError(f"coarse resolution {coarse} does not divide the grid of {resolution}: "
                         f"(resolution - 1) must be a multiple of (coarse - 1)")
    k = (resolution - 1) // (coarse - 1)
    sub = (np.arange(0, resolution, k)[:, None] * resolution + np.arange(0, resolution, k)[None, :]).ravel()
    return np.concatenate([sub, np.setdiff1d(idx, sub)])


def coarse_view(land: Landscape, coarse: int) -> Landscape:
    """The `coarse` x `coarse` sub-grid of a plane (what :func:`plane` computes first)."""
    r = len(land.coords[0])
    k = (r - 1) // (coarse - 1)
    return Landscape([a[::k] for a in land.coords], land.loss[::k, ::k], land.acc[::k, ::k], land.directions,
                     {**land.settings, "resolution": coarse})


def _surface(model, data, dirs, axes, origin, batch_size, device, memory_bytes, coarse, known, on_points, settings):
    from ..sal_stages import _tensors  # the shared (X, Y) / DataLoader reader
    x, y = _tensors(data)
    if len(x) == 0:
        raise UlvizError("a landscape needs at least one sample")
    device = compute_device(device)
    origin_p = _params(model, origin)
    mesh = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)  # (points, dims)
    shape = tuple(len(a) for a in axes)
    loss, acc, done = _known(known, mesh.shape[0])
    order = grid_order(shape[0], coarse) if len(axes) == 2 else np.arange(mesh.shape[0])
    todo = order[~done[order]]
    if len(todo):
        ev = _Evaluator(model, origin_p, dirs, x, y, batch_size=batch_size, device=device, memory_bytes=memory_bytes)
        step = ev.chunk
        for i in range(0, len(todo), step):
            idx = todo[i:i + step]
            l, a = ev(torch.from_numpy(mesh[idx]))
            loss[idx], acc[idx], done[idx] = l, a, True
            if on_points:
                on_points(idx, l, a)
    return Landscape([np.asarray(a, dtype=np.float64) for a in axes], loss.reshape(shape), acc.reshape(shape),
                     [{n: t.cpu() for n, t in d.items()} for d in dirs], settings)


def _known(known, n):
    if known is None:
        return np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    loss, acc, done = (np.asarray(a).ravel().copy() for a in known)
    if not (len(loss) == len(acc) == len(done) == n):
        raise UlvizError("cached landscape does not match the grid's size")
    return loss.astype(np.float64), acc.astype(np.float64), done.astype(bool)


def _axis(resolution: int, span) -> np.ndarray:
    if resolution < 2:
        raise UlvizError("a landscape needs a resolution of at least 2")
    lo, hi = _span(span)
    return np.linspace(lo, hi, resolution)


def _span(span) -> tuple[float, float]:
    if isinstance(span, (int, float)):
        lo, hi = -float(span), float(span)
    else:
        lo, hi = (float(v) for v in span)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UlvizError(f"a landscape's range must be two finite numbers, low < high; got {span!r}")
    return lo, hi
