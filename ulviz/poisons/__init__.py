"""Unlearnable (availability-poisoning) methods: one registry, one module per family.

A method turns a clean training set into a protected one; the test set is never touched. Every
method takes a ratio (the fraction of training samples protected, chosen by the seed) and a seed,
its budget is checked after generation, and results are cached on disk keyed by the training
data's content, the method, its parameters, the ratio and the seed.

| name   | paper                                   | kind                  | budget (default)        |
|--------|-----------------------------------------|-----------------------|-------------------------|
| clean  | -                                       | identity              | -                       |
| random | Huang et al., ICLR 2021 (control)       | uniform noise         | L-inf 8/255             |
| em     | Huang et al., ICLR 2021                 | error-minimizing      | L-inf 8/255             |
| rem    | Fu et al., ICLR 2022                    | robust error-min.     | L-inf 8/255, rho 4/255  |
| tap    | Fowl et al., NeurIPS 2021               | targeted adversarial  | L-inf 8/255             |
| lsp    | Yu et al., KDD 2022                     | synthetic patches     | L2 = sqrt(d) * 6/255    |
| ops    | Wu et al., ICLR 2023                    | one-pixel shortcut    | L0 = 1 pixel            |
| ar     | Sandoval-Segura et al., NeurIPS 2022    | autoregressive noise  | L2 = sqrt(d / 3072)     |
| cuda   | Sadasivan et al., CVPR 2023             | class-wise blur       | none (multiplicative)   |
| import | -                                       | a user's .npz         | -                       |

Each method follows its authors' public code in procedure; its docstring names the code and
every deliberate difference. The budgets are the papers' for 32x32x3 images; `budget` in the
PoisonConfig picks another convention (:data:`BUDGETS`: energy, mnist) for other image sizes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..config import PoisonConfig, checked_params
from ..data import Dataset
from ..errors import UlvizError, UnknownNameError
from ..provenance import GENERATION_THREADS, fixed_threads

CACHE_VERSION = 4  # bump when a method's output changes, so stale caches are not reused


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
    # thread count, its cache key names its code, and a run file stores what it made (ulviz.trainset)
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


def make_poison(config: PoisonConfig | str, dataset: Dataset, *, cache: bool = True, device=None,
                progress: bool = False, **params) -> Poison:
    """Protect `dataset`'s training set with the method named in `config` (cached on disk).

    The method's defaults are first set to the budget convention `config.budget`; parameters
    given in `config.params` override them."""
    from ..devices import compute_device

    if isinstance(config, str):
        config = PoisonConfig(method=config, params=params)
    method = method_info(config.method)
    full = resolve_params(config.method, dict(config.params),
                          scaled_params(config.method, method.defaults, dataset.image_shape, config.budget))
    indices = protected_indices(len(dataset.x_train), config.ratio, config.seed)
    path = _cache_path(dataset, config, full)
    if config.method in ("clean", "import") or not cache:  # cheap, and import's file may change
        return _generate(method, dataset, indices, config, full, compute_device(device), progress, path.stem)
    hit = _read_cache(path, dataset)
    if hit is not None:
        return hit
    poison = _generate(method, dataset, indices, config, full, compute_device(device), progress, path.stem)
    _write_cache(path, poison)
    return poison


def _generate(method: Method, dataset, indices, config, params, device, progress, key: str) -> Poison:
    g = torch.Generator().manual_seed(config.seed)
    # a trained method's surrogate sums weight gradients over the batch, split across CPU threads:
    # with 1 and 2 threads em-class differed by up to 2.08/255 after 5 rounds, so it runs on one
    threads = GENERATION_THREADS if method.trained else torch.get_num_threads()
    with fixed_threads(threads):
        poison = method.fn(dataset, indices, g, params, Context(device, progress))
    poison.x_train = poison.x_train.detach().cpu().float().clamp_(0.0, 1.0)
    check_budget(dataset.x_train, poison.x_train, indices, method, params)
    poison.info.update(params=params, ratio=config.ratio, seed=config.seed, cache_key=key,
                       generation_threads=threads if method.trained else None)
    return poison


def poison_key(config: PoisonConfig, dataset: Dataset) -> str:
    """The cache key of the protection `config` of `dataset` (what a run file records): a digest of
    the training data, the method, its full parameters, ratio and seed, and for a trained method
    the code that generates it."""
    method = method_info(config.method)
    full = resolve_params(config.method, dict(config.params),
                          scaled_params(config.method, method.defaults, dataset.image_shape, config.budget))
    return _cache_path(dataset, config, full).stem


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


# -- the on-disk cache ---------------------------------------------------------------------

def cache_dir() -> Path:
    """Where generated poisons are kept: $ULVIZ_CACHE_DIR, else ~/.cache/ulviz/poisons."""
    return Path(os.environ.get("ULVIZ_CACHE_DIR", Path.home() / ".cache" / "ulviz" / "poisons"))


def _fingerprint(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def _cache_path(dataset: Dataset, config: PoisonConfig, params: dict) -> Path:
    key = {"v": CACHE_VERSION, "x": _fingerprint(dataset.x_train), "y": _fingerprint(dataset.y_train),
           "method": config.method, "params": params, "ratio": config.ratio, "seed": config.seed}
    if method_info(config.method).trained:  # a changed generator, or torch, must not be served from the cache
        key.update(code=generator_code_digest(), torch=torch.__version__, threads=GENERATION_THREADS)
    text = json.dumps(key, sort_keys=True, default=str)
    return cache_dir() / f"{config.method}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"


# the modules whose code decides what a trained method generates: the methods, the surrogate's
# training steps, its architectures and augmentation
_GENERATOR_MODULES = ("poisons/__init__.py", "poisons/optimized.py", "steps.py", "models.py", "recipes.py")


@functools.lru_cache(maxsize=1)
def generator_code_digest() -> str:
    """sha256 (16 hex) of the source of the modules a trained method's output depends on: any edit
    there (a comment too; that only costs a regeneration) gives new cache keys."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for name in _GENERATOR_MODULES:
        h.update(name.encode() + b"\0" + (root / name).read_bytes())
    return h.hexdigest()[:16]


def _read_cache(path: Path, dataset: Dataset) -> Poison | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            x, idx, info = f["x_train"], f["indices"], json.loads(str(f["info"]))
            patterns = (torch.from_numpy(f["patterns"]), torch.from_numpy(f["pattern_of"])) if "patterns" in f else (None, None)
    except Exception:  # a damaged cache entry is regenerated, never trusted
        return None
    if x.shape != tuple(dataset.x_train.shape):
        return None
    return Poison(torch.from_numpy(x), torch.from_numpy(idx), {**info, "cached": str(path)}, *patterns)


def _write_cache(path: Path, poison: Poison) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        extra = {} if poison.patterns is None else {"patterns": poison.patterns.numpy(),
                                                      "pattern_of": poison.pattern_of.numpy()}
        np.savez(tmp, x_train=poison.x_train.numpy(), indices=poison.indices.numpy(),
                 info=json.dumps(poison.info, default=str), **extra)
        os.replace(tmp, path)  # atomic: a killed generation never leaves a half-written entry
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


from . import basic, optimized, patterns  # noqa: E402,F401  (register the methods)
