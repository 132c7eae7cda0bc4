"""Model-free methods: each plants a simple class-dependent pattern that a network learns
instead of the images (a "shortcut"), without ever looking at a model."""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ...core.errors import UlvizError
from .registry import Poison, register


@register("lsp", defaults={"eps": 6 / 255, "patch": None, "class_sep": 10.0}, budget="l2", budget_param="l2",
          kinds={"patch": int},
          summary="Yu et al., KDD 2022: linearly separable synthetic patches, L2 = sqrt(d) * eps")
def lsp(dataset, indices, g, params, ctx) -> Poison:
    """Synthetic noise from a linearly separable Gaussian mixture, as the original draws it with
    scikit-learn's `make_classification` (one informative feature per patch and channel, one
    cluster per class, class_sep 10): each class's centre a distinct vertex of the hypercube
    {-class_sep, +class_sep}^dim, each class's points standard normal vectors times the class's own
    random matrix A (entries uniform in [-1, 1], so covariance A^T A), plus its centre. A sample's
    point is upsampled to `patch`x`patch` blocks (nearest neighbour; 8 px on 32x32 as in the
    paper, a quarter of the side elsewhere) and rescaled to the L2 norm sqrt(d) * eps (1.30 on
    CIFAR: the norm of an L-inf 6/255 perturbation), then added and clipped to [0, 1].
    Difference: drawn with torch from the method's seed rather than NumPy's global state.

    The noise is computed in float64 and only then added to the float32 images: in float32 the
    matrix products and norms round differently on different CPUs (a run made on one CPU recorded
    a protected-set digest that another CPU's regeneration missed), while float64's rounding
    almost never survives the cast to float32, so every machine rebuilds the same images."""
    c, h, w = dataset.image_shape
    patch = int(params["patch"] or max(1, min(h, w) // 4))
    ph, pw = math.ceil(h / patch), math.ceil(w / patch)
    dim = c * ph * pw
    k = dataset.num_classes
    centres = _hypercube_vertices(k, dim, g) * float(params["class_sep"])
    transforms = (torch.rand(k, dim, dim, generator=g) * 2 - 1).double()  # one random linear map per class
    y = dataset.y_train[indices]
    z = torch.randn(len(indices), dim, generator=g).double()
    points = torch.bmm(z[:, None, :], transforms[y]).squeeze(1) + centres[y]
    # make_classification's features are laid out HWC (the original reshapes to (n, ph, pw, c))
    noise = points.reshape(-1, ph, pw, c).permute(0, 3, 1, 2)
    noise = noise.repeat_interleave(patch, 2).repeat_interleave(patch, 3)[:, :, :h, :w]
    l2 = math.sqrt(c * h * w) * float(params["eps"])
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None] * l2
    x = dataset.x_train.clone()
    x[indices] = x[indices] + noise.float()
    params["l2"] = l2
    return Poison(x, indices, {"patch": patch, "l2": l2})


def _hypercube_vertices(k: int, dim: int, g: torch.Generator) -> torch.Tensor:
    """`k` distinct random vertices of {-1, 1}^dim (make_classification's cluster centres), in
    float64 like the rest of lsp's noise."""
    seen: set[tuple] = set()
    out = []
    while len(out) < k:
        v = torch.randint(0, 2, (dim,), generator=g) * 2 - 1
        if tuple(v.tolist()) not in seen:
            seen.add(tuple(v.tolist()))
            out.append(v)
    return torch.stack(out).double()


@register("ops", defaults={"pixels": 1}, budget="l0", budget_param="pixels",
          summary="Wu et al., ICLR 2023: one pixel per class set to an extreme colour, searched per class")
def ops(dataset, indices, g, params, ctx) -> Poison:
    """As the original's search: classes in order; for each, every (position, extreme colour)
    pair (each channel 0 or 1) is scored by mean / std of |x_p - colour| over the class's images
    and channels together (large: far from what the class has there; small spread: consistently
    so); the best pair not taken by an earlier class wins (`pixels` of them when more are
    allowed), and every protected image of the class gets that pixel set to that colour.
    A later class may reuse a position with another colour, as in the original."""
    c, h, w = dataset.image_shape
    k_pix = int(params["pixels"])
    if k_pix * dataset.num_classes > h * w * 2 ** c:
        raise UlvizError(f"ops: {k_pix} pixels for each of {dataset.num_classes} classes do not fit in {h}x{w} images")
    x = dataset.x_train.clone()
    colours = torch.cartesian_prod(*[torch.tensor([0.0, 1.0])] * c).reshape(-1, c)  # (2^c, c), first channel slowest
    y = dataset.y_train
    taken = torch.zeros(len(colours), h * w, dtype=torch.bool)  # (colour, position) pairs used so far
    chosen = {}
    for k in range(dataset.num_classes):
        members = x[y == k].reshape(-1, c, h * w).double()  # (n, c, h*w)
        if len(members) == 0:
            continue
        dev = (members[None] - colours.double()[:, None, :, None]).abs()  # (colours, n, c, h*w)
        score = dev.mean((1, 2)) / (dev.std((1, 2), unbiased=False) + 1e-12)  # (colours, h*w)
        score[taken] = float("-inf")
        picks = score.flatten().topk(k_pix).indices
        taken.view(-1)[picks] = True
        chosen[k] = [(int(p) // (h * w), divmod(int(p) % (h * w), w)) for p in picks]
        sel = indices[y[indices] == k]
        for colour, (i, j) in chosen[k]:
            x[sel, :, i, j] = colours[colour][None, :]
    return Poison(x, indices, {"pixels": {int(k): [[i, j] for _, (i, j) in px] for k, px in chosen.items()},
                               "colours": {int(k): [colours[col].tolist() for col, _ in px] for k, px in chosen.items()}})


@register("ar", defaults={"l2": None, "crop": 4}, budget="l2", budget_param="l2", kinds={"l2": float},
          summary="Sandoval-Segura et al., NeurIPS 2022: class-wise autoregressive noise, L2 budget")
def ar(dataset, indices, g, params, ctx) -> Poison:
    """As the original: one AR process per class, each with a 3x3 causal window per channel whose
    eight coefficients (standard normal, normalized to *sum* 1, the current tap 0) are accepted
    only when the process they drive stays bounded (norm of a generated pattern at most 50 in
    3 trials) and responds differently from the classes accepted before (`_ar_filters`). Every
    protected sample gets its own pattern: a Gaussian canvas `crop` pixels larger than the image,
    filled in raster order by the process (no innovation noise), its first `crop` rows and
    columns cut off, scaled to the L2 budget (1.0 on 32x32x3, as in the paper; sqrt(d / 3072)
    on other sizes, the same energy per value), added and clipped to [0, 1].

    Coefficients summing to 1 (not in absolute value) give a process with a unit root: it
    neither decays nor explodes, so the pattern fills the whole image. Difference: the original
    ships 10 filter sets found once by this search; ulviz runs the search from the seed, for any
    number of classes and channels."""
    c, h, w = dataset.image_shape
    if params["l2"] is None:
        params["l2"] = math.sqrt(c * h * w / 3072)
    crop = int(params["crop"])
    filters = _ar_filters(dataset.num_classes, c, (h + crop, w + crop), crop, g)
    y = dataset.y_train[indices]
    noise = _ar_generate(filters[y], 1, (h + crop, w + crop), crop, g)[:, 0]  # each sample its class's process
    noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None] * params["l2"]
    x = dataset.x_train.clone()
    x[indices] = x[indices] + noise
    return Poison(x, indices, {"l2": params["l2"], "coefficients": filters.tolist()})


def _ar_generate(coeffs: torch.Tensor, n: int, size, crop: int, g: torch.Generator) -> torch.Tensor:
    """`n` patterns of each AR process in `coeffs` ((m, c, 3, 3) -> (m, n, c, h, w); (c, 3, 3) ->
    (n, c, h, w)): each value of a Gaussian canvas past the first two rows and columns, in raster
    order, becomes the weighted sum of the 3x3 window ending at it (its own tap weighted 0), each
    channel on its own; the first `crop` rows and columns are cut off."""
    single = coeffs.dim() == 3
    coeffs = coeffs[None] if single else coeffs
    m, c = coeffs.shape[:2]
    H, W = size
    x = torch.randn(m, n, c, H, W, generator=g)
    a = coeffs.reshape(m, 1, c, 9)
    for i in range(2, H):
        for j in range(2, W):
            x[..., i, j] = (x[..., i - 2:i + 1, j - 2:j + 1].reshape(m, n, c, 9) * a).sum(-1)
    x = x[..., crop:, crop:]
    return x[0] if single else x


def _ar_filters(k: int, c: int, size, crop: int, g: torch.Generator, bound: float = 50.0,
                min_response: float = 10.0, trials: int = 3, batch: int = 1024, max_batches: int = 200) -> torch.Tensor:
    """`k` sets of AR coefficients (k, c, 3, 3) found by the original's search: draw standard
    normal coefficients, set the current tap to 0, normalize each channel's to sum 1; keep a set
    when its 3 generated patterns have norms at most `bound` and its (normalized) pattern excites
    every set kept before by at least `min_response` (the sum of the ReLU of the earlier set's
    matched filter, its coefficients with -1 at the current tap, over the pattern; 3 once the
    classes pass 10: the original's 3 instead of 10 for CIFAR-100). Candidates are tested `batch` at a time
    (about 1.4% pass the norm test on 3 channels). Both thresholds are the original's for 32x32x3;
    on other sizes they scale with the image (the norm bound with sqrt(d / 3072), the response,
    a sum over the filter's output, with its number of values)."""
    h, w = size[0] - crop, size[1] - crop
    bound *= math.sqrt(c * h * w / 3072)
    min_response *= c * (h - 2) * (w - 2) / (3 * 30 * 30)
    kept: list[torch.Tensor] = []
    for _ in range(max_batches):
        b = torch.randn(batch, c, 9, generator=g)
        b[..., 8] = 0.0
        b = (b / b.sum(-1, keepdim=True)).reshape(batch, c, 3, 3)
        pats = _ar_generate(b, trials, size, crop, g)  # (batch, trials, c, h, w)
        norms = pats.flatten(2).norm(dim=2)
        stable = torch.isfinite(b).flatten(1).all(1) & torch.isfinite(pats).flatten(1).all(1) & (norms <= bound).all(1)
        for i in stable.nonzero().flatten().tolist():
            pattern = pats[i, -1:] / norms[i, -1]
            if kept and min(_ar_response(f, pattern) for f in kept) < min_response:
                continue
            kept.append(b[i])
            if len(kept) == k:
                return torch.stack(kept)
            if len(kept) == 10:
                min_response *= 0.3  # the original's 3 instead of 10 for CIFAR-100
    raise UlvizError(f"ar: found only {len(kept)} of {k} stable, distinct AR processes")


def _ar_response(coeffs: torch.Tensor, pattern: torch.Tensor) -> float:
    """How strongly a pattern excites another process's matched filter (zero on its own output)."""
    f = coeffs.clone()
    f[:, 2, 2] = -1.0
    return float(F.relu(F.conv2d(pattern, f[None])).sum())


@register("cuda", defaults={"blur": 0.3, "kernel": 3}, summary="Sadasivan et al., CVPR 2023: class-wise random blur filters")
def cuda(dataset, indices, g, params, ctx) -> Poison:
    """As the original: each class gets a random `kernel`x`kernel` filter, weights uniform in
    [0, blur] with one random tap set to 1, applied to each channel separately (the same filter
    for all channels, zero padding, 'same' size); each blurred image is divided by its own
    maximum (over all channels) and clipped to [0, 1]. Multiplicative: no norm budget."""
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
            blurred = F.conv2d(x[sel], weight, padding=k // 2, groups=c)
            peak = blurred.flatten(1).max(1).values.clamp_min(1e-12)  # a black image stays black
            x[sel] = (blurred / peak[:, None, None, None]).clamp(0, 1)
    return Poison(x, indices, {"filters": filters.squeeze(1).squeeze(1).tolist()})
