"""Linear probe: did a network trained on protected data (for any task) learn features that carry
the class information anyway?

Freeze the run's network at an epoch, take its penultimate features (the input of its last weight
layer; for a fully convolutional head, that input averaged over the image) of the *clean* training
images, fit a logistic-regression head on them with the true class labels, and score it on the
clean test images. A high probe accuracy under a protection that keeps the task's own accuracy
low means the protection hid the labels' shortcut, not the content.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.errors import UlvizError


@dataclass
class ProbeResult:
    train_acc: float  # the probe's accuracy on the clean training images it was fitted on
    test_acc: float  # its accuracy on the clean test images
    features: int  # the dimension of the penultimate features
    epoch: int  # the run's epoch whose weights were probed


def last_weight_layer(model: nn.Module) -> nn.Module:
    """The last Linear or Conv module in the model's registration order (its head)."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    if not layers:
        raise UlvizError("the model has no Linear or Conv layer to probe below")
    return layers[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """(N, D) float64: what the model's head receives for each image (spatial maps averaged)."""
    head = last_weight_layer(model)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        hook.remove()
        model.train(was_training)
    feats = torch.cat([f.flatten(2).mean(2) if f.dim() > 2 else f for f in seen])
    return feats.double().numpy()


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
              max_iter: int = 2000) -> tuple[float, float]:
    """(train accuracy, test accuracy) of a multinomial logistic regression on standardized features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    clf = LogisticRegression(max_iter=max_iter)
    clf.fit(scaler.transform(train_x), train_y)
    return float(clf.score(scaler.transform(train_x), train_y)), float(clf.score(scaler.transform(test_x), test_y))


def linear_probe(path, epoch: int = -1) -> ProbeResult:
    """The linear probe of the run file at `path` at `epoch` (-1: its last finished one)."""
    from .landscape.runs import _run_dataset, run_model
    from ..core.provenance import data_digest
    from ..store.runs import open_run
    from ..protect.trainset import check_digest

    run = open_run(path)
    last = run.epochs_done
    ep = epoch if epoch >= 0 else last + 1 + epoch
    if not 0 <= ep <= last:
        raise UlvizError(f"{run.path} has epochs 0..{last}; epoch {epoch} is not stored")
    model = run_model(run, ep)
    clean = _run_dataset(run)  # clean images and their true classes, whatever the run's task
    check_digest(run, "clean_train", data_digest(clean.x_train, clean.y_train))  # the images it trained on
    f_train = penultimate_features(model, clean.x_train)
    f_test = penultimate_features(model, clean.x_test)
    train_acc, test_acc = fit_probe(f_train, clean.y_train.numpy(), f_test, clean.y_test.numpy())
    return ProbeResult(train_acc, test_acc, f_train.shape[1], ep)
