"""Defenses a trainer may use against unlearnable examples: a registry, like the methods.

Two kinds, by when they act:

- *data* defenses transform the training images once, before training, as the ISS paper
  (Liu et al., "Image Shortcut Squeezing", ICML 2023) does: ``jpeg`` (a real JPEG codec, Pillow's,
  quality 10 by default), ``grayscale`` (ITU-R 601-2 luma, kept as three equal channels so the
  model is unchanged), ``iss`` (grayscale, then JPEG at quality 10);
- *batch* defenses act on every training batch, after the recipe's augmentation: ``cutout``
  (DeVries & Taylor 2017: one square of side `size` zeroed at a uniform centre, clipped at the
  border), ``mixup`` (Zhang et al. 2018: images and one-hot labels mixed with one lambda ~
  Beta(alpha, alpha) per batch), ``cutmix`` (Yun et al. 2019: a box of area 1 - lambda pasted
  from the shuffled batch, labels mixed by the box's actual area). Mixed labels are soft targets,
  which ``F.cross_entropy`` takes as probabilities. ``ueraser`` is UEraser-Lite (Qin et al., "Learning
  the Unlearnable", 2023): every image through the public code's kornia pipeline once per step
  (plasma brightness, plasma contrast and channel shuffle, each with probability `p` = 0.5, then
  TrivialAugment), trained with the plain loss (the code's ``repeat = 1``; UEraser-Max, the
  worst of 5 augmentations per image, is not implemented);
- *model* defenses need the model being trained: ``at`` is PGD adversarial training (Madry et al.
  2018), L-inf, `eps` 8/255, `steps` 10 of `alpha` 2/255 by default, as in APBench's
  ``MadrysLoss``: the attack runs with the model in eval mode from a Gaussian start of scale
  `alpha`, each step signed-gradient ascent projected into the ball and [0, 1], and the model
  then trains on the attacked batch. Its cost is about (steps + 1) training steps per batch; on a
  CPU, fewer steps of a larger `alpha` (say 2 of 4/255) keep it feasible.

Defenses never touch the test set. A spec is ``name`` or ``name:key=value,...`` on the CLI.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..core.config import checked_params
from ..core.errors import UlvizError, UnknownNameError


@dataclass(frozen=True)
class Defense:
    name: str
    kind: str  # "data": once, on the training images; "batch": every training batch; "model": as batch, given the model
    fn: Callable  # data: (x, **params) -> x; batch: (x, y, num_classes, generator, **params) -> (x, y);
    # model: (model, x, y, generator, **params) -> (x, y)
    defaults: dict


_DEFENSES: dict[str, Defense] = {}


def _register(name: str, kind: str, **defaults):
    def deco(fn):
        _DEFENSES[name] = Defense(name, kind, fn, defaults)
        return fn
    return deco


def list_defenses() -> list[str]:
    return list(_DEFENSES)


def get_defense(name: str) -> Defense:
    if name not in _DEFENSES:
        raise UnknownNameError("defense", name, list_defenses())
    return _DEFENSES[name]


def parse_defense(spec: str) -> dict:
    """``name[:key=value,...]`` -> {"name": ..., "params": {...}} (values read as JSON when they can be)."""
    from ..core.config import parse_param
    name, _, rest = spec.partition(":")
    params = dict(parse_param(item) for item in rest.split(",") if item.strip())
    spec = {"name": name.strip(), "params": params}
    check_defenses([spec])
    return spec


def check_defenses(specs: list[dict]) -> None:
    """Refuse an unknown defense, parameter or value type in `specs` before training starts,
    not when the first batch meets it."""
    for spec in specs:
        _params(spec)


def _params(spec: dict) -> tuple[Defense, dict]:
    d = get_defense(spec["name"])
    return d, checked_params(f"defense {d.name!r}", spec.get("params", {}), d.defaults)


def defend_data(x: torch.Tensor, specs: list[dict]) -> torch.Tensor:
    """The training images after every data defense of `specs`, in order (batch defenses skipped)."""
    for spec in specs:
        d, params = _params(spec)
        if d.kind == "data":
            x = d.fn(x, **params)
    return x


def defend_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, specs: list[dict],
                 generator: torch.Generator | None = None, model: torch.nn.Module | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch after every batch and model defense of `specs`, in order; y becomes soft
    targets if one mixes. Model defenses (at) need `model`, the network being trained."""
    for spec in specs:
        d, params = _params(spec)
        if d.kind == "batch":
            x, y = d.fn(x, y, num_classes, generator, **params)
        elif d.kind == "model":
            if model is None:
                raise UlvizError(f"defense {d.name!r} needs the model being trained")
            x, y = d.fn(model, x, y, generator, **params)
    return x, y


def batch_defense(specs: list[dict], num_classes: int, model: torch.nn.Module | None = None):
    """The batch and model defenses of `specs` as one (x, y, generator) -> (x, y) step for the
    training loop, or None when there is none (batches then go untouched)."""
    if not any(get_defense(s["name"]).kind != "data" for s in specs):
        return None
    return lambda x, y, generator: defend_batch(x, y, num_classes, specs, generator, model)


# -- data defenses ----------------------------------------------------------------------------

@_register("jpeg", "data", quality=10)
def jpeg(x: torch.Tensor, quality: int = 10) -> torch.Tensor:
    """Every image through Pillow's JPEG encoder and decoder at `quality` (uint8 in between)."""
    from PIL import Image
    if not 1 <= int(quality) <= 95:
        raise UlvizError(f"jpeg quality must be within 1..95, got {quality}")
    out = torch.empty_like(x)
    arr = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(arr):
        im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert(im.mode))
        out[i] = torch.from_numpy(dec.reshape(img.shape).copy()).permute(2, 0, 1).float() / 255
    return out


@_register("grayscale", "data")
def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (0.299 R + 0.587 G + 0.114 B), repeated on every channel."""
    if x.shape[1] == 1:
        return x.clone()
    if x.shape[1] != 3:
        raise UlvizError(f"grayscale needs 1 or 3 channels, got {x.shape[1]}")
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x).clone()


@_register("iss", "data", quality=10)
def iss(x: torch.Tensor, quality: int = 10) -> torch.Tensor:
    """Image shortcut squeezing: grayscale, then JPEG at `quality` (the ISS paper's combination)."""
    return jpeg(grayscale(x), quality)


# -- batch defenses ---------------------------------------------------------------------------

def _uniform(n: int, generator) -> torch.Tensor:
    return torch.rand(n, generator=generator)


@_register("cutout", "batch", size=16)
def cutout(x, y, num_classes, generator=None, size: int = 16):
    """One size x size square per image zeroed, centred uniformly (clipped at the border)."""
    n, _, h, w = x.shape
    cy = (_uniform(n, generator) * h).long()
    cx = (_uniform(n, generator) * w).long()
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    half = int(size) // 2
    inside = ((rows >= (cy - half).view(n, 1, 1)) & (rows < (cy - half + int(size)).view(n, 1, 1))
              & (cols >= (cx - half).view(n, 1, 1)) & (cols < (cx - half + int(size)).view(n, 1, 1)))
    return x * (~inside).unsqueeze(1).to(x.dtype), y


def _soft(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y if y.dim() == 2 else torch.nn.functional.one_hot(y, num_classes).float()


def _beta(alpha: float, generator) -> float:
    g = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    return float(g.beta(alpha, alpha))


@_register("mixup", "batch", alpha=1.0)
def mixup(x, y, num_classes, generator=None, alpha: float = 1.0):
    """x·λ + x[perm]·(1-λ), and the same for one-hot labels, λ ~ Beta(alpha, alpha) per batch."""
    lam = _beta(alpha, generator)
    perm = torch.randperm(len(x), generator=generator)
    t = _soft(y, num_classes)
    return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


@_register("cutmix", "batch", alpha=1.0)
def cutmix(x, y, num_classes, generator=None, alpha: float = 1.0):
    """A box of area about (1-λ) of the image pasted from the shuffled batch; labels mixed by the
    box's area after clipping at the border."""
    lam = _beta(alpha, generator)
    n, _, h, w = x.shape
    perm = torch.randperm(n, generator=generator)
    cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(_uniform(1, generator) * h), int(_uniform(1, generator) * w)
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
    kept = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    t = _soft(y, num_classes)
    return out, kept * t + (1 - kept) * t[perm]


def _seed_from(generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


@functools.lru_cache(maxsize=8)
def _ueraser_pipeline(p: float):
    # built once per p: kornia's modules are stateless between calls
    import kornia.augmentation as K
    return K.AugmentationSequential(
        K.RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5, 1.0), same_on_batch=False, p=p, keepdim=True),
        K.RandomPlasmaContrast(roughness=(0.3, 0.7), p=p),
        K.RandomChannelShuffle(same_on_batch=False, p=p, keepdim=True),
        K.auto.TrivialAugment(),
    )


@_register("ueraser", "batch", p=0.5)
def ueraser(x, y, num_classes, generator=None, p: float = 0.5):
    """UEraser-Lite: one draw of UEraser's kornia augmentations per image (labels untouched)."""
    if not 0 <= float(p) <= 1:
        raise UlvizError(f"ueraser p must be within 0..1, got {p}")
    if x.shape[1] != 3:
        raise UlvizError(f"ueraser needs 3-channel images (channel shuffle, colour operations), got {x.shape[1]}")
    # kornia draws from torch's global generator: fork it, seeded from ours, so runs repeat exactly
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_from(generator))
        out = _ueraser_pipeline(float(p))(x)
    return out.clamp(0, 1).detach(), y


def pgd_attack(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, steps: int = 10,
               alpha: float = 2 / 255, generator: torch.Generator | None = None) -> torch.Tensor:
    """The L-inf PGD adversarial batch (APBench's MadrysLoss procedure): model in eval mode (its
    mode is restored), a Gaussian start of scale `alpha`, `steps` signed-gradient ascent steps of
    `alpha` on the cross-entropy, each projected into the `eps` ball around x and into [0, 1].
    Only the input's gradient is taken; the parameters and their .grad are untouched."""
    was_training = model.training
    model.eval()
    try:
        noise = torch.randn(x.shape, generator=generator).to(x.device, x.dtype)
        x_adv = (x + alpha * noise).clamp(x - eps, x + eps).clamp(0, 1)
        for _ in range(int(steps)):
            x_adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, [x_adv])
            x_adv = (x_adv.detach() + alpha * grad.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    finally:
        model.train(was_training)
    return x_adv.detach()


@_register("at", "model", eps=8 / 255, steps=10, alpha=2 / 255)
def adversarial_training(model, x, y, generator=None, eps: float = 8 / 255, steps: int = 10, alpha: float = 2 / 255):
    """PGD adversarial training: the batch replaced by its PGD attack on the current model."""
    if eps < 0 or alpha <= 0 or int(steps) < 1:
        raise UlvizError(f"at needs eps >= 0, alpha > 0 and steps >= 1, got eps={eps}, alpha={alpha}, steps={steps}")
    return pgd_attack(model, x, y, eps, steps, alpha, generator), y
