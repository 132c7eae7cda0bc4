"""The reference methods: `clean` (identity), `random` (uniform noise in the L-inf ball) and
`import` (a poison made elsewhere).

`random` is the control every unlearnable-examples paper reports (Huang et al., ICLR 2021): noise
of the same budget that is *not* optimised barely hurts learning, which shows that it is the
structure of the other methods' noise, not its size, that stops the network.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...core.errors import UlvizError
from ...data.datasets import open_npz
from .registry import Poison, register


@register("clean", summary="no protection: the training set as it is")
def clean(dataset, indices, g, params, ctx) -> Poison:
    return Poison(dataset.x_train.clone(), indices[:0], {})


@register("random", defaults={"eps": 8 / 255, "mode": "sample"}, budget="linf", budget_param="eps",
          summary="uniform noise in [-eps, eps], per sample or one pattern per class (control)")
def random_noise(dataset, indices, g, params, ctx) -> Poison:
    eps, mode = float(params["eps"]), params["mode"]
    x = dataset.x_train.clone()
    noise = (torch.rand(*_pattern_count(dataset, mode), *dataset.image_shape, generator=g) * 2 - 1) * eps
    x[indices] = x[indices] + _per_sample(noise, dataset, indices, mode)
    return Poison(x, indices, {"mode": mode})


def _pattern_count(dataset, mode: str) -> tuple[int]:
    if mode == "class":
        return (dataset.num_classes,)
    if mode == "sample":
        return (len(dataset.x_train),)
    raise UlvizError(f"mode must be 'sample' or 'class', got {mode!r}")


def _per_sample(noise: torch.Tensor, dataset, indices, mode: str) -> torch.Tensor:
    """Each protected sample's pattern: its own (sample-wise) or its class's (class-wise)."""
    return noise[dataset.y_train[indices]] if mode == "class" else noise[indices]


@register("import", defaults={"path": None}, kinds={"path": str}, summary="perturbations or poisoned images from a user's .npz")
def imported(dataset, indices, g, params, ctx) -> Poison:
    """`path` is an .npz holding `x_train` (poisoned images, uint8 or float in [0, 1]) or `delta`
    (perturbations in [0, 1] units), one per training sample, same shape as the training set
    (NCHW or NHWC). Only the samples chosen by the ratio are taken from it."""
    if not params["path"]:
        raise UlvizError("method 'import' needs path=FILE.npz")
    path = Path(params["path"]).expanduser()
    with open_npz(path) as f:
        key = "x_train" if "x_train" in f.files else "delta" if "delta" in f.files else None
        if key is None:
            raise UlvizError(f"{path}: expected an array 'x_train' (poisoned images) or 'delta' (perturbations)")
        a = f[key]
    want = tuple(dataset.x_train.shape)
    if a.ndim == 4 and a.shape != want and (a.shape[0], a.shape[3], a.shape[1], a.shape[2]) == want:
        a = a.transpose(0, 3, 1, 2)  # NHWC
    if a.ndim == 3 and want[1] == 1:
        a = a[:, None]
    if a.shape != want:
        raise UlvizError(f"{path}: '{key}' has shape {a.shape}; the training set is {want} "
                         f"({want[0]} samples): it must hold one entry per training sample")
    t = torch.from_numpy(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
    if not torch.isfinite(t).all():
        raise UlvizError(f"{path}: '{key}' holds NaN or infinite values")
    x = dataset.x_train.clone()
    x[indices] = (t[indices] if key == "x_train" else x[indices] + t[indices]).clamp(0, 1)
    return Poison(x, indices, {"source": str(path), "array": key})
