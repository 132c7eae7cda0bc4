"""SAL of run files: the data it is measured on, the training callback that appends each epoch's
SAL to the run file, SAL computed afterwards from a run file's snapshots (resumable), and the
one-line description of how a run's stored SAL was computed.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Callable, Iterable

import torch

from ..core.config import check_numbers
from ..core.errors import UlvizError, UnknownNameError
from ..models.registry import build_model, weight_layer_names
from .sal import ESTIMATORS, FAST_SUBSET, layer_sal, sal_arrays


# -- runs -------------------------------------------------------------------------------------

def sal_data(dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The data SAL is measured on: "train" = what the run trained on (maybe protected), "test" = clean test."""
    if split == "train":
        return dataset.x_train, dataset.y_train
    if split == "test":
        return dataset.x_test, dataset.y_test
    raise UlvizError(f"SAL split must be 'train' or 'test', got {split!r}")


def describe_sal(settings: dict, epochs) -> str:
    """One line saying how a run's stored SAL was computed (for captions): estimator, samples,
    radius, rounds and the epochs measured."""
    if not settings:
        return "no SAL stored"
    epochs = [int(e) for e in epochs]
    subset = settings.get("subset") or (FAST_SUBSET if settings.get("estimator") == "fast" else None)
    data = "the clean test set" if settings.get("split") == "test" else "the data the run trained on"
    samples = f"the first {subset} samples of {data}" if subset else f"all of {data}"
    if len(epochs) > 2 and all(b - a == epochs[1] - epochs[0] for a, b in zip(epochs, epochs[1:])):
        step = epochs[1] - epochs[0]
        when = f"epochs {epochs[0]}-{epochs[-1]}" + (f", every {step}" if step > 1 else ", every epoch")
    else:
        when = "epoch" + ("s " if len(epochs) != 1 else " ") + ", ".join(map(str, epochs))
    return (f"{settings.get('estimator', '?')} SAL on {samples}, radius {settings.get('eps', '?')} of each layer's "
            f"norm, {settings.get('iters', '?')} rounds, at {when}")


def sal_kwargs(config) -> dict:
    """layer_sal keyword arguments from a :class:`ulviz.core.config.SALConfig`."""
    return dict(estimator=config.estimator, iters=config.iters, lr_min=config.lr_min, lr_max=config.lr_max,
                eps=config.eps, batch_size=config.batch_size, shuffle=config.shuffle, seed=config.seed,
                subset=config.subset)


def sal_callback(config):
    """A training callback that appends every trained epoch's SAL to the run file."""
    def callback(ctx) -> None:
        if ctx.epoch == 0 or config.estimator == "none":
            return  # the paper measures SAL after each epoch of training
        records = layer_sal(ctx.model, sal_data(ctx.dataset, config.split), device=ctx.device, **sal_kwargs(config))
        if ctx.writer is not None:
            ctx.writer.append_sal(ctx.epoch, sal_arrays(records, weight_layer_names(ctx.model)))
    return callback


def compute_run_sal(path, config, *, device=None, progress: Callable[[int, int], None] | None = None,
                    epochs: Iterable[int] | None = None):
    """Compute SAL for every stored epoch of a run file (or only `epochs`) from its snapshots,
    with `config` (a SALConfig), skipping epochs already computed with the same settings. Returns
    the run. UD averages over the epochs that have SAL, so a few spread epochs give a cheaper,
    coarser estimate of the same quantity."""
    from ..data.datasets import load_dataset
    from ..store.analyses import append_sal_row, prepare_sal
    from ..store.runs import open_run
    from ..protect.trainset import run_training_data

    if config.estimator not in ESTIMATORS:
        raise UnknownNameError("SAL estimator", config.estimator, list(ESTIMATORS))
    check_numbers(config)
    run = open_run(path)
    # what the run trained on, in its task (SAL measures the task's loss: rotations, masks, ...)
    dataset = run_training_data(run, load_dataset(run.config.data), protected=config.split == "train")
    data = sal_data(dataset, config.split)
    model = build_model(run.config, dataset)
    layers = weight_layer_names(model)
    done = set(prepare_sal(path, layers, asdict(config)))
    wanted = range(1, run.epochs_done + 1) if epochs is None else sorted(set(epochs))
    missing = [e for e in wanted if not 1 <= e <= run.epochs_done]
    if missing:
        raise UlvizError(f"{path}: no trained epoch {missing[0]} (it has epochs 1..{run.epochs_done})")
    todo = [e for e in wanted if e not in done]
    for i, epoch in enumerate(todo):
        model.load_state_dict(run.snapshot(epoch))
        records = layer_sal(model, data, device=device, **sal_kwargs(config))
        append_sal_row(path, epoch, sal_arrays(records, layers))
        if progress:
            progress(i + 1, len(todo))
    return open_run(path)
