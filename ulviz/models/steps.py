"""The shared train and eval steps: a low room used by training, the poisons' surrogates and SAL
alike, so none of them imports another (it used to be a circle: training -> poisons -> training)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import DivergedError
from ..data.recipes import augment_batch


def correct_count(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """How many samples the logits get right; with one target per pixel (dense tasks), each
    sample counts the fraction of its pixels right, so accuracy stays a fraction of samples."""
    hits = (logits.argmax(1) == y).float()
    return hits.flatten(1).mean(1).sum() if hits.dim() > 1 else hits.sum()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512,
             device: torch.device | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` in eval mode (its mode is restored); never augmented."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        out = model(xb)
        losses = F.cross_entropy(out, yb, reduction="none")  # per sample, or per pixel for dense tasks
        total_loss += (losses.flatten(1).mean(1) if losses.dim() > 1 else losses).sum().item()
        correct += correct_count(out, yb).item()
    model.train(was_training)
    return total_loss / len(x), correct / len(x)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor,
               grad_clip: float | None = None) -> torch.Tensor:
    """One optimizer step on a batch (model in train mode); returns the batch loss (detached).
    `grad_clip` clips the gradient's global norm first (the EM trainer uses 5). A NaN or infinite
    loss raises DivergedError before anything is updated."""
    model.train()
    loss = F.cross_entropy(model(xb), yb)
    if not torch.isfinite(loss):
        raise DivergedError(f"loss became {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                order: torch.Tensor, batch_size: int, device: torch.device, augment: str = "none",
                generator: torch.Generator | None = None, defend=None) -> float:
    """One pass of minibatch training in `order`, each batch augmented (`augment`, randomness from
    `generator`) and then defended (`defend(x, y, generator)`, see ulviz.protect.defenses); returns the
    mean loss, raises DivergedError on a NaN/inf loss."""
    total = 0.0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        xb, yb = x[idx].to(device), y[idx].to(device)
        if augment != "none":
            xb = augment_batch(xb, augment, generator)
        if defend is not None:  # the trainer's batch defenses (cutout, mixup, ...): after augmentation
            xb, yb = defend(xb, yb, generator)
        try:
            loss = train_step(model, optimizer, xb, yb)
        except DivergedError as e:
            raise DivergedError(f"{e} at batch {i // batch_size}") from None
        total += loss.item() * len(idx)
    return total / len(order)
