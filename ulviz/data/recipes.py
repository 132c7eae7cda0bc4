"""Training recipes (optimizer, schedule, batch size, augmentation) and the augmentations they use.

A recipe is a named set of :class:`~ulviz.core.config.TrainConfig` fields. It is resolved once, when a
run is configured, so the run file records the recipe's name *and* every value it set; a flag
given explicitly (``--lr``, ``--augment``) overrides the recipe's value and is recorded as such.

| recipe | optimizer                   | lr   | schedule | batch | augmentation (32x32 RGB) |
|--------|-----------------------------|------|----------|-------|--------------------------|
| quick  | SGD, momentum 0.9, wd 5e-4  | 0.05 | cosine   | 64    | none                     |
| paper  | SGD, momentum 0.9, wd 5e-4  | 0.1  | constant | 128   | crop (pad 4) + flip      |

`paper` is the training of "How Far Are We from True Unlearnability?" (and of the unlearnable-
examples literature it evaluates): SGD lr 0.1, momentum 0.9, weight decay 5e-4, random crop with
4-pixel zero padding and horizontal flip. The lr is constant: the official script's MultiStepLR
milestones lie past its last epoch, so it never decays. The original batch is 256 on 50,000
images (195 steps an epoch); on the 5,085-image CIFAR-10 subset 256 would leave 20 steps an
epoch, and a network at lr 0.1 would still be near its initialization after the tens of epochs a
CPU affords, so `paper` uses 128 (40 steps an epoch; pass --batch-size 256 to match the original
exactly). Flips and crops suit natural images only: on grayscale digit sets (digits, MNIST) a
flipped 2 is not a 2, so there `paper` trains without augmentation.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from ..core.config import TrainConfig
from ..core.errors import UnknownNameError

_RECIPES: dict[str, dict] = {
    "quick": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=64,
                  augment="none"),
    "paper": dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant", batch_size=128,
                  augment="crop_flip"),
}
AUGMENTATIONS = ("none", "crop_flip", "crop")  # what `augment` may name
NATURAL_IMAGE_SETS = ("cifar10", "cifar100")  # datasets whose default recipe is `paper`


def list_recipes() -> list[str]:
    """Names accepted by :func:`apply_recipe`."""
    return list(_RECIPES)


def default_recipe(dataset: str) -> str:
    """`paper` for the natural-image sets the papers use, `quick` for the rest."""
    return "paper" if dataset in NATURAL_IMAGE_SETS else "quick"


def apply_recipe(train: TrainConfig, recipe: str, dataset: str, **overrides) -> TrainConfig:
    """`train` with the recipe's fields, then `overrides` (values the user gave explicitly; None
    means not given). On a dataset that is not natural images, `paper` does not flip or crop."""
    if recipe not in _RECIPES:
        raise UnknownNameError("training recipe", recipe, list_recipes())
    fields = dict(_RECIPES[recipe])
    if fields["augment"] != "none" and dataset not in NATURAL_IMAGE_SETS:
        fields["augment"] = "none"
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields["augment"] not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", fields["augment"], list(AUGMENTATIONS))
    return replace(train, recipe=recipe, **fields)


# -- augmentation --------------------------------------------------------------------------

def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A new batch, each image randomly cropped from its copy zero-padded by `pad` pixels
    (torchvision's RandomCrop(size, padding=pad)) and, for `crop_flip`, mirrored left-right with
    probability 1/2 (RandomHorizontalFlip). The randomness comes from `generator` (on the CPU), so a
    run's augmentation is a function of its seed. `x` is never modified."""
    if kind == "none":
        return x
    if kind not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", kind, list(AUGMENTATIONS))
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device) if kind == "crop_flip" else None
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = torch.arange(w, device=x.device).expand(n, w)
    if flip is not None:  # a flipped crop reads its columns right to left
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    cols = (dx[:, None] + cols)[:, None, :]  # (n, 1, w)
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows, cols]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()
