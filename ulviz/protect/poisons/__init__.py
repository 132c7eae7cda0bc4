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
from pathlib import Path

import numpy as np
import torch

from ...core.config import PoisonConfig
from ...core.provenance import GENERATION_THREADS, PACKAGE_DIR, fixed_threads
from ...data.datasets import Dataset
from .registry import (BUDGETS, Context, Method, Poison, check_budget, list_budgets, list_methods, method_info,
                       protected_indices, register, resolve_params, scaled_params)

__all__ = ["BUDGETS", "Context", "Method", "Poison", "check_budget", "list_budgets", "list_methods", "method_info",
           "protected_indices", "register", "resolve_params", "scaled_params",
           "CACHE_VERSION", "cache_dir", "generator_code_digest", "in_8bit_steps", "make_poison", "poison_key"]

CACHE_VERSION = 4  # bump when a method's output changes, so stale caches are not reused


def make_poison(config: PoisonConfig | str, dataset: Dataset, *, cache: bool = True, device=None,
                progress: bool = False, **params) -> Poison:
    """Protect `dataset`'s training set with the method named in `config` (cached on disk).

    The method's defaults are first set to the budget convention `config.budget`; parameters
    given in `config.params` override them."""
    from ...core.devices import compute_device

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
    if method.trained and poison.patterns is None:
        poison.x_train = in_8bit_steps(dataset.x_train, poison.x_train, method, params)
    check_budget(dataset.x_train, poison.x_train, indices, method, params)
    poison.info.update(params=params, ratio=config.ratio, seed=config.seed, cache_key=key,
                       generation_threads=threads if method.trained else None)
    return poison


def in_8bit_steps(clean: torch.Tensor, protected: torch.Tensor, method: Method, params: dict) -> torch.Tensor:
    """`protected` rounded to whole 8-bit steps when the clean set is 8-bit images (CIFAR-10,
    MNIST; the 8x8 digits are not, and are left as made), within the method's L-inf budget.

    Why: the originals release a sample-wise protection as 8-bit images, so that is what a victim
    trains on. Huang et al.'s dataset.py adds the noise to the uint8 images and casts back; Fu et
    al.'s code base (its em, tap and rem alike) keeps the noise as int8 steps added to the uint8
    images and clipped. Here the step is rounded to the nearest (not truncated), so a pixel moves
    by at most half a step from the float result and an 8/255 budget stays whole. A run then
    stores a byte per value (ulviz.store.protection's "steps" encoding) instead of a float."""
    levels = torch.round(clean * 255)
    if not torch.equal(levels / 255, clean):
        return protected
    steps = torch.round(protected * 255) - levels
    if method.budget == "linf":
        k = math.floor(float(params[method.budget_param]) * 255 + 1e-4)  # whole steps inside the ball
        steps.clamp_(-k, k)
    return (levels + steps).clamp_(0, 255) / 255


def poison_key(config: PoisonConfig, dataset: Dataset) -> str:
    """The cache key of the protection `config` of `dataset` (what a run file records): a digest of
    the training data, the method, its full parameters, ratio and seed, and for a trained method
    the code that generates it."""
    method = method_info(config.method)
    full = resolve_params(config.method, dict(config.params),
                          scaled_params(config.method, method.defaults, dataset.image_shape, config.budget))
    return _cache_path(dataset, config, full).stem


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
_GENERATOR_MODULES = ("protect/poisons/__init__.py", "protect/poisons/registry.py", "protect/poisons/optimized.py",
                      "models/steps.py", "models/registry.py", "data/recipes.py")


@functools.lru_cache(maxsize=1)
def generator_code_digest() -> str:
    """sha256 (16 hex) of the source of the modules a trained method's output depends on: any edit
    there (a comment too; that only costs a regeneration) gives new cache keys."""
    root = PACKAGE_DIR
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
