"""A lecture toy: unlearnable examples on a model with two weights, where the plane is the whole weight space.

The model is logistic regression without a bias, ``p(y = +1 | x) = sigmoid(w · x)`` with
``w = (w1, w2)``, so every picture of the loss over the (w1, w2) plane is the *exact* loss
landscape, not a 2-D slice of a bigger one. The clean data are two Gaussian classes, labels
``y = ±1``, with means ``±separation`` on the first axis: the true feature is x1, and x2 is noise.

The poison is a class-wise shortcut on the second axis, like the class-wise noise of unlearnable
examples: on a fraction of the training points, x2 is moved by ``y * strength`` ("shift") or
replaced by ``y * strength`` ("shortcut", noise-free and so perfectly separable). The clean test
set carries no shortcut. What to watch:

- on clean data gradient descent walks to the true solution (w1 large, w2 near 0) and its
  clean-test accuracy climbs to the best a linear model can do;
- on poisoned data the loss has a valley along the w2 axis: the shortcut drives the training loss
  to zero before w1 has moved much, so the clean-test accuracy stays near where it started;
- once the loss is near zero nothing pushes any weight any more: the poisoned path's
  Sharpness-Aware Learnability (SAL) collapses, which is what the Unlearnable Distance measures
  layer by layer on real networks;
- poison only part of the training set and the clean points keep w1 learning: partial poisoning
  does not make data unlearnable.

Per-weight SAL follows the paper's definition (Ye, Su & Qian, ICLR 2025; :mod:`ulviz.measure.sal`)
restricted to one scalar weight: only w_i moves, within ``|w_i' - w_i| <= eps * |w_i|``;
``s_max`` = highest loss there minus the loss at w, ``s_min`` = loss at w minus the lowest, and
SAL = the larger of the two. The ball is an interval and the loss is convex along it, so both
optima are exact: the highest loss is at an end of the interval, the lowest where the derivative
changes sign (found by safeguarded Newton steps). :func:`weight_sal_search` is the paper's projected
descent/ascent search, for comparison.

Everything is numpy; :func:`lesson` computes all the page shows in about a tenth of a second.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import erf, sqrt
from typing import NamedTuple

import numpy as np

POISON_KINDS = ("shift", "shortcut")


@dataclass(frozen=True)
class ToyConfig:
    """Everything the teaching page can change."""

    n: int = 400  # training points (half per class)
    n_test: int = 4000  # clean test points, to measure clean-test accuracy
    separation: float = 1.0  # the class means are at ±separation on the first axis (the true feature)
    noise: float = 1.0  # standard deviation of the Gaussian noise on both axes
    poison_kind: str = "shortcut"  # "shift": x2 += y*strength; "shortcut": x2 = y*strength (noise-free)
    poison_strength: float = 3.0  # size of the class-wise shortcut on the second axis
    poisoned_fraction: float = 1.0  # fraction of the training points that carry the shortcut
    lr: float = 0.5  # gradient-descent step size
    steps: int = 100  # gradient-descent steps
    start: tuple[float, float] = (-1.0, -1.0)  # the weights both paths start from (wrong on both features)
    eps: float = 0.05  # SAL radius, relative to |w_i| as in the paper
    seed: int = 0  # draws the data and chooses which points are poisoned


class ToyData(NamedTuple):
    x_clean: np.ndarray  # (n, 2) clean training inputs
    y: np.ndarray  # (n,) training labels, ±1
    x_poisoned: np.ndarray  # (n, 2) the same inputs with the shortcut on the poisoned ones
    x_test: np.ndarray  # (n_test, 2) clean test inputs
    y_test: np.ndarray  # (n_test,) test labels, ±1
    poisoned: np.ndarray  # (n,) bool, which training points carry the shortcut


class WeightSAL(NamedTuple):
    """Per-weight SAL parts; the last axis is the weight (w1, w2)."""

    sal: np.ndarray  # the larger of s_max and s_min
    s_max: np.ndarray  # highest loss in the interval minus the loss at w (>= 0)
    s_min: np.ndarray  # loss at w minus the lowest loss in the interval (>= 0)


# ---------------------------------------------------------------- data


def gaussian_classes(n: int, separation: float, noise: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points, half per class, labels ±1, means (±separation, 0), isotropic noise."""
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)
    x = noise * rng.standard_normal((n, 2))
    x[:, 0] += y * separation
    return x, y


def poison(x: np.ndarray, y: np.ndarray, kind: str, strength: float, fraction: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The inputs with a class-wise shortcut on the second axis of round(fraction * n) random
    points, and the mask of those points. Only x2 changes: the true feature x1 is untouched."""
    if kind not in POISON_KINDS:
        raise ValueError(f"unknown poison kind {kind!r}; choose from {POISON_KINDS}")
    n = len(x)
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[:int(round(np.clip(fraction, 0.0, 1.0) * n))]] = True
    out = x.copy()
    if kind == "shift":
        out[chosen, 1] += y[chosen] * strength
    else:
        out[chosen, 1] = y[chosen] * strength
    return out, chosen


def toy_data(cfg: ToyConfig) -> ToyData:
    """Clean and poisoned training sets (same points, same labels) and a clean test set."""
    rng = np.random.default_rng(cfg.seed)
    x, y = gaussian_classes(cfg.n, cfg.separation, cfg.noise, rng)
    x_test, y_test = gaussian_classes(cfg.n_test, cfg.separation, cfg.noise, rng)
    x_poisoned, chosen = poison(x, y, cfg.poison_kind, cfg.poison_strength, cfg.poisoned_fraction, rng)
    return ToyData(x, y, x_poisoned, x_test, y_test, chosen)


# ---------------------------------------------------------------- loss, gradient, descent


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)) without overflow; twice as fast as np.logaddexp(0, z)."""
    return np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0)


def loss(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean logistic loss log(1 + exp(-y w·x)) in nats, for one w (2,) or many (..., 2)."""
    margins = np.asarray(w, dtype=np.float64) @ (x * y[:, None]).T  # (..., n)
    return _softplus(-margins).mean(axis=-1)


def gradient(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The loss's exact gradient: -mean(sigmoid(-y w·x) y x), for one w (2,) or many (..., 2)."""
    yx = x * y[:, None]
    return -(_sigmoid(-(np.asarray(w, dtype=np.float64) @ yx.T)) @ yx) / len(y)


def loss_surface(x: np.ndarray, y: np.ndarray, w1_grid: np.ndarray, w2_grid: np.ndarray) -> np.ndarray:
    """The exact mean loss at every grid point: shape (len(w1_grid), len(w2_grid)), [i, j] = L(w1_i, w2_j)."""
    w1, w2 = np.meshgrid(np.asarray(w1_grid, float), np.asarray(w2_grid, float), indexing="ij")
    return loss(x, y, np.stack([w1, w2], axis=-1))


def gd_path(x: np.ndarray, y: np.ndarray, start, lr: float, steps: int) -> np.ndarray:
    """Full-batch gradient descent from `start`: the weights before and after every step, (steps + 1, 2)."""
    path = np.empty((steps + 1, 2))
    path[0] = start
    for t in range(steps):
        path[t + 1] = path[t] - lr * gradient(x, y, path[t])
    return path


def accuracy_along(path: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fraction of (x, y) classified right by sign(w·x) at every row of `path`; w·x = 0 counts
    as a coin flip (half right), so w = 0 scores chance, 50%."""
    margins = np.atleast_2d(path) @ (x * y[:, None]).T
    return (margins > 0).mean(axis=1) + 0.5 * (margins == 0).mean(axis=1)


def expected_accuracy(w: np.ndarray, separation: float, noise: float) -> np.ndarray:
    """The clean-test accuracy of w on infinitely many clean points: Phi(separation w1 / (noise |w|))."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    z = separation * w[:, 0] / (noise * np.maximum(np.linalg.norm(w, axis=1), 1e-300))
    return np.array([0.5 * (1 + erf(v / sqrt(2))) for v in z])


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy measured on n independent test points whose expected
    accuracy is p: sqrt(p (1 - p) / n). A measured accuracy scatters this much around p, so it
    can read above the best expected accuracy by chance."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------- per-weight SAL


def _loss_1d(x, y, w, i, t):
    """The loss with weight i set to t (t: (P, K) candidates for each of the P rows of w)."""
    other = 1 - i
    margins = y * (t[..., None] * x[:, i] + w[:, other, None, None] * x[:, other])  # (P, K, n)
    return _softplus(-margins).mean(axis=-1)


def _slopes_1d(x, y, w, i, t):
    """First and second derivatives of the loss in w_i with weight i set to t (shapes like t);
    the first is non-decreasing in t and the second positive, because the loss is convex."""
    other = 1 - i
    margins = y * (t[..., None] * x[:, i] + w[:, other, None, None] * x[:, other])
    s = _sigmoid(-margins)
    return -(s * (y * x[:, i])).mean(axis=-1), (s * (1 - s) * x[:, i] ** 2).mean(axis=-1)


def weight_sal_along(x: np.ndarray, y: np.ndarray, path: np.ndarray, eps: float = 0.05,
                     newton: int = 12) -> WeightSAL:
    """The exact per-weight SAL at every row of `path` (P, 2): arrays of shape (P, 2).

    Only w_i moves, in [w_i - r, w_i + r] with r = eps * |w_i|. The loss is convex in w_i, so its
    maximum there is at an end of the interval and its minimum at an end or where the slope
    crosses zero; `newton` steps (bisecting whenever a step would leave the bracket around that
    zero) pin it to float precision.
    """
    w = np.atleast_2d(np.asarray(path, dtype=np.float64))
    base = loss(x, y, w)  # (P,)
    s_max, s_min = np.empty_like(w), np.empty_like(w)
    for i in range(2):
        r = eps * np.abs(w[:, i])
        lo, hi = w[:, i] - r, w[:, i] + r
        ends = _loss_1d(x, y, w, i, np.stack([lo, hi], axis=1))  # (P, 2)
        s_max[:, i] = np.maximum(ends.max(axis=1) - base, 0.0)
        lowest = ends.min(axis=1)
        # an interior minimum only where the slope goes from negative to positive: solve slope = 0 there
        slope_at_ends = _slopes_1d(x, y, w, i, np.stack([lo, hi], axis=1))[0]
        inner = np.flatnonzero((slope_at_ends[:, 0] < 0) & (slope_at_ends[:, 1] > 0))
        if len(inner):
            t = _zero_of_slope(x, y, w[inner], i, lo[inner], hi[inner], w[inner, i], newton)
            lowest[inner] = np.minimum(lowest[inner], _loss_1d(x, y, w[inner], i, t[:, None])[:, 0])
        s_min[:, i] = np.maximum(base - lowest, 0.0)
    return WeightSAL(np.maximum(s_max, s_min), s_max, s_min)


def _zero_of_slope(x, y, w, i, a, b, t, steps):
    """Where d loss / d w_i = 0 inside the brackets [a, b] (slope < 0 at a, > 0 at b), from t:
    safeguarded Newton, converging quadratically once close, never leaving the bracket."""
    for _ in range(steps):
        slope, curvature = (v[:, 0] for v in _slopes_1d(x, y, w, i, t[:, None]))
        a, b = np.where(slope < 0, t, a), np.where(slope > 0, t, b)
        step = t - slope / np.maximum(curvature, 1e-300)
        t = np.where((step >= a) & (step <= b), step, 0.5 * (a + b))  # landing on an end: converged
    return t


def weight_sal(x: np.ndarray, y: np.ndarray, w, eps: float = 0.05) -> WeightSAL:
    """The exact SAL of each of the two weights at w: arrays of shape (2,)."""
    out = weight_sal_along(x, y, np.asarray(w, dtype=np.float64)[None], eps)
    return WeightSAL(*(a[0] for a in out))


def weight_sal_search(x: np.ndarray, y: np.ndarray, w, eps: float = 0.05, iters: int = 10,
                      lr: float = 0.1) -> WeightSAL:
    """The paper's search for one scalar weight at a time: a min copy descends and a max copy
    ascends the loss for `iters` full-batch steps of size `lr`, each projected back into the
    interval; the lowest and highest losses seen (both start at L(w)) give s_min and s_max.
    Never beyond the exact values of :func:`weight_sal`; close to them when lr and iters suffice."""
    w = np.asarray(w, dtype=np.float64)
    base = float(loss(x, y, w))
    s_max, s_min = np.zeros(2), np.zeros(2)
    for i in range(2):
        r = eps * abs(w[i])
        lo_w, hi_w, lowest, highest = w.copy(), w.copy(), base, base
        for _ in range(iters):
            lo_w[i] = np.clip(lo_w[i] - lr * gradient(x, y, lo_w)[i], w[i] - r, w[i] + r)
            hi_w[i] = np.clip(hi_w[i] + lr * gradient(x, y, hi_w)[i], w[i] - r, w[i] + r)
            lowest, highest = min(lowest, float(loss(x, y, lo_w))), max(highest, float(loss(x, y, hi_w)))
        s_max[i], s_min[i] = highest - base, base - lowest
    return WeightSAL(np.maximum(s_max, s_min), s_max, s_min)


# ---------------------------------------------------------------- everything the page shows


@dataclass(frozen=True)
class Lesson:
    """What the teaching page draws, for clean and poisoned training data alike."""

    data: ToyData
    w1: np.ndarray  # the grid's w1 values
    w2: np.ndarray  # the grid's w2 values
    surface: dict[str, np.ndarray]  # "clean"/"poisoned" -> loss on the grid, (len(w1), len(w2))
    path: dict[str, np.ndarray]  # -> gradient-descent path, (steps + 1, 2)
    train_loss: dict[str, np.ndarray]  # -> loss on its own training data along the path
    train_acc: dict[str, np.ndarray]  # -> accuracy on its own training data along the path
    test_acc: dict[str, np.ndarray]  # -> clean-test accuracy along the path
    sal: dict[str, WeightSAL]  # -> per-weight SAL on its own training data along the path, (steps + 1, 2)


def grid_extent(paths, minimum: float = 3.0, margin: float = 1.15) -> float:
    """Half-width of a square grid centred at 0 that holds every path (at least `minimum`), so the
    view stays put while the paths stay inside it."""
    reach = max(float(np.abs(p).max()) for p in paths)
    return max(minimum, margin * reach)


def lesson(cfg: ToyConfig, resolution: int = 81) -> Lesson:
    """Data, exact loss surfaces, gradient-descent paths from the same start, clean-test accuracy
    and per-weight SAL along each path, on clean and on poisoned training data."""
    data = toy_data(cfg)
    train = {"clean": data.x_clean, "poisoned": data.x_poisoned}
    path = {k: gd_path(x, data.y, cfg.start, cfg.lr, cfg.steps) for k, x in train.items()}
    half = grid_extent(path.values())
    w1 = w2 = np.linspace(-half, half, resolution)
    return Lesson(
        data=data, w1=w1, w2=w2,
        surface={k: loss_surface(x, data.y, w1, w2) for k, x in train.items()},
        path=path,
        train_loss={k: loss(x, data.y, path[k]) for k, x in train.items()},
        train_acc={k: accuracy_along(path[k], x, data.y) for k, x in train.items()},
        test_acc={k: accuracy_along(path[k], data.x_test, data.y_test) for k in train},
        sal={k: weight_sal_along(x, data.y, path[k], cfg.eps) for k, x in train.items()},
    )
