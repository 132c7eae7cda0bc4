"""Model-free methods: each plants a simple class-dependent pattern that a network learns
instead of the images (a "shortcut"), without ever looking at a model."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..errors import UlvizError
from . import Poison, register


@register("lsp", defaults={"eps": 6 / 255, "patch": None, "class_sep": 10.0}, budget="l2", budget_param="l2",
          summary="Yu et al., KDD 2022: linearly separable synthetic patches, L2 = sqrt(d) * eps")
def lsp(dataset, indices, g, params, ctx) -> Poison:
    """Per sample, a point of its class's Gaussian cluster in a low-dimensional space (one value per
    patch and channel; clusters `class_sep` apart, unit variance), upsampled to patches and scaled to
    the L2 norm sqrt(d) * eps (the norm of an L-inf eps perturbation). `patch` defaults to a quarter of
    the image side (8 px on 32x32, as in the paper; 2 px on 8x8 digits)."""
    c, h, w = dataset.image_shape
    patch = int(params["patch"] or max(1, min(h, w) // 4))
    ph, pw = math.ceil(h / patch), math.ceil(w / patch)
    dim = c * ph * pw
    # cluster centres on distinct vertices of a hypercube of side class_sep (as make_classification does)
    signs = torch.randint(0, 2, (dataset.num_classes, dim), generator=g) * 2 - 1
    centres = signs.float() * params["class_sep"] / 2
    y = dataset.y_train[indices]
    points = centres[y] + torch.randn(len(indices), dim, generator=g)
    noise = points.reshape(-1, c, ph, pw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]
    l2 = math.sqrt(c * h * w) * float(params["eps"])
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None] * l2
    x = dataset.x_train.clone()
    x[indices] = x[indices] + noise
    params["l2"] = l2
    return Poison(x, indices, {"patch": patch, "l2": l2})


@register("ops", defaults={"pixels": 1}, budget="l0", budget_param="pixels",
          summary="Wu et al., ICLR 2023: one pixel per class set to an extreme colour, searched per class")
def ops(dataset, indices, g, params, ctx) -> Poison:
    """For each class, the pixel position and extreme colour (each channel 0 or 1) whose deviation
    from the class's own pixels is largest and most consistent (mean / std of |x_p - colour| over
    the class's images); every protected image of the class gets that pixel (`pixels` of them when
    more are allowed).

    Positions are assigned greedily, best score first, and a position taken by one class is not
    given to another: on images with a constant background (digits, MNIST) every class would
    otherwise pick the same corner in the same colour, a mark that says nothing about the class.
    On natural images the classes' best positions differ anyway, as in the paper."""
    c, h, w = dataset.image_shape
    k_pix = int(params["pixels"])
    if k_pix * dataset.num_classes > h * w:
        raise UlvizError(f"ops: {k_pix} pixels for each of {dataset.num_classes} classes do not fit in {h}x{w} images")
    x = dataset.x_train.clone()
    colours = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * c).reshape(-1, c)  # (2^c, c)
    y = dataset.y_train
    best_score, best_colour = {}, {}
    for k in range(dataset.num_classes):
        members = x[y == k]  # (n, c, h, w)
        if len(members) == 0:
            continue
        # deviation of every image at every position from every colour: (colours, n, h*w)
        dev = (members.reshape(1, len(members), c, h * w) - colours[:, None, :, None]).abs().mean(2)
        score = dev.mean(1) / (dev.std(1, unbiased=False) + 1e-6)  # (colours, h*w): large, consistent
        best_score[k], best_colour[k] = score.max(0)  # best colour at each position
    chosen = {k: [] for k in best_score}
    ranked = {k: v.argsort(descending=True).tolist() for k, v in best_score.items()}  # positions, best first
    taken: set[int] = set()
    while any(len(v) < k_pix for v in chosen.values()):
        # the best (class, position) still open: classes needing a pixel, positions nobody has
        cls, pos = max(((k, p) for k, v in chosen.items() if len(v) < k_pix
                        for p in ranked[k][:len(taken) + k_pix] if p not in taken),
                       key=lambda kp: float(best_score[kp[0]][kp[1]]))
        chosen[cls].append((colours[best_colour[cls][pos]], divmod(pos, w)))
        taken.add(pos)
    for k, pixels in chosen.items():
        sel = indices[y[indices] == k]
        for colour, (i, j) in pixels:
            x[sel, :, i, j] = colour[None, :]
    return Poison(x, indices, {"pixels": {int(k): [[i, j] for _, (i, j) in px] for k, px in chosen.items()}})


@register("ar", defaults={"l2": None, "size": 3}, budget="l2", budget_param="l2",
          summary="Sandoval-Segura et al., NeurIPS 2022: class-wise autoregressive noise, L2 budget")
def ar(dataset, indices, g, params, ctx) -> Poison:
    """Each class gets its own autoregressive process per channel (coefficients on the causal
    `size`x`size` window, summing in absolute value to 1 so it stays bounded); each protected sample
    is that process run from its own Gaussian start, then scaled to the L2 budget (1.0 on a
    32x32x3 image, as in the paper; sqrt(d / 3072) on other sizes, the same per-pixel energy)."""
    c, h, w = dataset.image_shape
    if params["l2"] is None:
        params["l2"] = math.sqrt(c * h * w / 3072)
    s = int(params["size"])
    coeffs = torch.rand(dataset.num_classes, c, s * s - 1, generator=g) * 2 - 1
    coeffs = coeffs / coeffs.abs().sum(-1, keepdim=True)
    y = dataset.y_train[indices]
    n = len(indices)
    pad = s - 1
    canvas = torch.zeros(n, c, h + pad, w + pad)
    canvas[:, :, :pad, :] = torch.randn(n, c, pad, w + pad, generator=g)  # Gaussian start rows
    canvas[:, :, :, :pad] = torch.randn(n, c, h + pad, pad, generator=g)  # and columns
    a = coeffs[y]  # (n, c, s*s-1)
    for i in range(pad, h + pad):
        for j in range(pad, w + pad):
            window = canvas[:, :, i - pad:i + 1, j - pad:j + 1].reshape(n, c, -1)[:, :, :-1]
            canvas[:, :, i, j] = (window * a).sum(-1)
    noise = canvas[:, :, pad:, pad:]
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None] * params["l2"]
    x = dataset.x_train.clone()
    x[indices] = x[indices] + noise
    return Poison(x, indices, {"l2": params["l2"]})


@register("cuda", defaults={"blur": 0.3, "kernel": 3}, summary="Sadasivan et al., CVPR 2023: class-wise random blur filters")
def cuda(dataset, indices, g, params, ctx) -> Poison:
    """Each class gets a random `kernel`x`kernel` filter, weights uniform in [0, blur] with one
    random tap set to 1, shared by all channels; protected images are convolved with their class's
    filter (zero padding, 'same' size) and clipped to [0, 1]. Multiplicative: no norm budget."""
    c = dataset.image_shape[0]
    k = int(params["kernel"])
    filters = torch.rand(dataset.num_classes, k * k, generator=g) * float(params["blur"])
    taps = torch.randint(0, k * k, (dataset.num_classes,), generator=g)
    filters[torch.arange(dataset.num_classes), taps] = 1.0
    filters = filters.reshape(-1, 1, 1, k, k)
    x = dataset.x_train.clone()
    y = dataset.y_train[indices]
    for cls in range(dataset.num_classes):
        sel = indices[y == cls]
        if len(sel):
            weight = filters[cls].expand(c, 1, k, k)
            x[sel] = F.conv2d(x[sel], weight, padding=k // 2, groups=c)
    return Poison(x, indices, {"filters": filters.squeeze(1).squeeze(1).tolist()})
