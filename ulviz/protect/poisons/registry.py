"""The registry of unlearnable methods: what a method is (:class:`Method`, registered with
:func:`register` by the modules of each family), what it returns (:class:`Poison`), the budget
conventions and the budget check every generated protection passes.

Apart from the generation and its cache (the package's ``__init__``), so that the families
(basic, patterns, optimized) import the registry without importing the package that imports them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ...core.config import checked_params
from ...core.errors import UlvizError, UnknownNameError


@dataclass
class Poison:
    """A protected training set and what was done to it."""

    x_train: torch.Tensor  # the protected images, same shape as the clean ones, in [0, 1]
    indices: torch.Tensor  # which training samples were perturbed
    info: dict = field(default_factory=dict)  # method-specific facts (budget, steps, accuracy reached)
    # a class-wise method's additive patterns (P, C, H, W), when it has them, and which pattern
    # each protected sample wears (len(indices),): x_train[indices] = clamp(x[indices] + patterns[pattern_of], 0, 1)
    # exactly, so a run file can store P patterns instead of a perturbation per sample
    patterns: torch.Tensor | None = None
    pattern_of: torch.Tensor | None = None


@dataclass(frozen=True)
class Method:
    """A registered method: fn(dataset, indices, generator, params, ctx) -> Poison."""

    fn: Callable
    defaults: dict  # every parameter it takes, with its default
    budget: str | None  # "linf", "l2", "l0" or None: which norm `check_budget` enforces
    budget_param: str | None  # the parameter that holds the budget
    summary: str  # one line: paper and idea
    kinds: dict = field(default_factory=dict)  # the type of each parameter whose default is None (int, float, str)
    # it trains a surrogate: its output depends on float reductions, so it is generated with a fixed
    # thread count, its cache key names its code, and a run file stores what it made (ulviz.protect.trainset)
    trained: bool = False


@dataclass
class Context:
    """What a method may use besides the data: a device and a progress reporter."""

    device: torch.device
    progress: bool = False


_METHODS: dict[str, Method] = {}


def register(name: str, *, defaults: dict | None = None, budget: str | None = None,
             budget_param: str | None = None, summary: str = "", kinds: dict | None = None, trained: bool = False):
    """Add a method to the registry (see :class:`Method`). A parameter takes the type of its
    default; `kinds` names the type of those whose default is None."""
    defaults, kinds = dict(defaults or {}), dict(kinds or {})
    untyped = sorted(k for k, v in defaults.items() if v is None and k not in kinds)
    if untyped:  # a programming error in a method's registration, caught at import
        raise TypeError(f"method {name!r}: give the type of {', '.join(untyped)} in kinds=")

    def deco(fn):
        _METHODS[name] = Method(fn, defaults, budget, budget_param,
                                summary or (fn.__doc__ or "").strip().split("\n")[0], kinds, trained)
        return fn
    return deco


def list_methods() -> list[str]:
    """Names accepted by :func:`make_poison`."""
    return list(_METHODS)


def method_info(name: str) -> Method:
    if not isinstance(name, str) or name not in _METHODS:
        raise UnknownNameError("unlearnable method", name, list_methods())
    return _METHODS[name]


def protected_indices(n: int, ratio: float, seed: int) -> torch.Tensor:
    """round(ratio * n) training indices chosen by `seed`, sorted."""
    if not 0.0 <= ratio <= 1.0:
        raise UlvizError(f"poison ratio must be in [0, 1], got {ratio}")
    k = round(ratio * n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values


def resolve_params(name: str, params: dict, defaults: dict | None = None) -> dict:
    """`defaults` (the method's own when None) updated with `params`; unknown parameters and
    values of the wrong type are refused."""
    method = method_info(name)
    checked_params(f"method {name!r}", params, method.defaults, method.kinds)
    return {**(method.defaults if defaults is None else defaults), **params}


# -- budget conventions ----------------------------------------------------------------------

_CIFAR_D = 3 * 32 * 32  # the image size the papers' budgets are set for
_LINF_KEYS = {"random": ("eps",), "em": ("eps", "step"), "rem": ("eps", "step", "rho", "rho_step"),
              "tap": ("eps", "step"), "lsp": ("eps",)}  # per-pixel budgets (and the steps that scale with them)
BUDGETS = {
    "standard": "the papers' budgets as they give them (L-inf 8/255, LSP 6/255 per pixel, AR L2 1.0 on 32x32x3)",
    "energy": "each perturbation gets the total L2 energy it has on a CIFAR image: per-pixel budgets x sqrt(3072/d), "
              "AR's L2 1.0, one-pixel shortcut on 3 values (3 pixels on grayscale)",
    "mnist": "the MNIST literature's convention (DeepConfuse, NTGA): L-inf 0.3; per-pixel budgets and their steps "
             "scaled by 0.3 / (8/255), AR's L2 by the same factor",
}


def list_budgets() -> list[str]:
    """Names of the budget conventions a PoisonConfig's `budget` may take."""
    return list(BUDGETS)


def scaled_params(method: str, params: dict, image_shape, budget: str) -> dict:
    """`params` (a method's defaults) with the budget parameters of the convention `budget`."""
    if budget not in BUDGETS:
        raise UnknownNameError("budget convention", budget, list_budgets())
    if budget == "standard":
        return dict(params)
    c, h, w = image_shape
    d = c * h * w
    factor = math.sqrt(_CIFAR_D / d) if budget == "energy" else 0.3 / (8 / 255)
    out = dict(params)
    for key in _LINF_KEYS.get(method, ()):
        if out.get(key) is not None:
            out[key] = float(out[key]) * factor
    if method == "ar":
        out["l2"] = 1.0 if budget == "energy" else math.sqrt(d / _CIFAR_D) * factor
    if method == "ops" and budget == "energy":
        out["pixels"] = math.ceil(3 / c)
    return out


def check_budget(clean: torch.Tensor, poisoned: torch.Tensor, indices: torch.Tensor, method: Method, params: dict) -> None:
    """Raise if any sample outside `indices` changed, or a protected one exceeds the method's budget."""
    changed = (poisoned != clean).flatten(1).any(1)
    outside = changed.clone()
    outside[indices] = False
    if outside.any():
        raise UlvizError(f"{int(outside.sum())} unprotected sample(s) were modified")
    if method.budget is None or len(indices) == 0:
        return
    delta = (poisoned[indices] - clean[indices]).flatten(1).double()
    eps = float(params[method.budget_param])
    if method.budget == "linf":
        worst = delta.abs().max().item()
    elif method.budget == "l2":
        worst = delta.norm(dim=1).max().item()
    else:  # l0: pixels (all channels of one position) changed per sample
        c = clean.shape[1]
        worst = (poisoned[indices] != clean[indices]).reshape(len(indices), c, -1).any(1).sum(1).max().item()
    if worst > eps * (1 + 1e-5) + 1e-7:
        raise UlvizError(f"{method.budget} budget exceeded: {worst:.6g} > {eps:.6g}")
