"""The training loop: one run = one model trained on a (possibly protected) training set.

Reproducible on CPU for a seed: the seed fixes the initial weights, and every epoch's data order
comes from its own generator seeded by (seed, epoch), so no hidden RNG state carries between
epochs. Each finished epoch is appended to the run file (metrics + a snapshot of every tensor),
then the per-epoch callbacks run (SAL and other analyses hook in there).
"""
from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ..core.config import RunConfig, check_numbers
from ..core.devices import compute_device
from ..core.errors import DivergedError, RunFileError, UlvizError, UnknownNameError
from ..core.provenance import environment, fixed_threads
from ..data.datasets import Dataset, list_datasets, load_dataset
from ..data.tasks import check_task_model
from ..measure.sal_runs import sal_callback
from ..models.registry import build_model, list_models, weight_layer_names
from ..models.steps import evaluate, train_epoch
from ..protect.defenses import batch_defense, check_defenses
from ..protect.trainset import run_training_data, training_set
from ..store.runs import RunWriter, check_new_run_path, open_run, reopen_for_resume

__all__ = ["EpochContext", "TrainResult", "build_model", "evaluate", "lr_at", "make_optimizer", "replay", "resume",
           "train", "train_epoch"]


@dataclass
class EpochContext:
    """What a per-epoch callback sees, after the epoch's row is written."""

    epoch: int  # the epoch just finished (1-based; 0 = the initial model)
    model: nn.Module  # the model being trained (callbacks must not modify it)
    dataset: Dataset  # train = the data the model trains on (maybe protected); test = clean
    metrics: dict[str, float]  # the row just written
    writer: RunWriter | None  # the run file, or None when training without one
    device: torch.device
    config: RunConfig


Callback = Callable[[EpochContext], None]


@dataclass
class TrainResult:
    model: nn.Module  # the trained model (on the CPU)
    path: Path | None  # the run file written, if any
    history: list[dict[str, float]]  # one metrics row per epoch, epoch 0 first
    status: str  # complete | diverged


def lr_at(config: RunConfig, epoch: int) -> float:
    """Learning rate used during `epoch` (1-based): constant, cosine to 0, or step (x0.1 at 50%, 75%)."""
    t, total = config.train, config.train.epochs
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "cosine":
        return 0.5 * t.lr * (1 + math.cos(math.pi * (epoch - 1) / total))
    if t.schedule == "step":
        return t.lr * (0.1 ** sum(epoch > m for m in (total * 0.5, total * 0.75)))
    raise UlvizError(f"unknown lr schedule {t.schedule!r}; choose constant, cosine or step")


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    raise UlvizError(f"unknown optimizer {t.optimizer!r}; choose sgd or adam")


def epoch_order(n: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Generator]:
    """The data order of one epoch and the generator its augmentation continues from: a function
    of (seed, epoch) alone, so a resumed run matches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g), g


def train(config: RunConfig, out: str | Path | None = None, *, callbacks: Sequence[Callback] = (),
          overwrite: bool = False, progress: bool = False, dataset: Dataset | None = None) -> TrainResult:
    """Train the run described by `config`, writing the run file `out` if given.

    `dataset` skips loading when the caller already has it (its training set is then protected
    by `config.poison` here, as when loaded).
    """
    check_config(config)  # before the data loads or a poison is generated: bad input costs nothing
    if out is not None:
        check_new_run_path(out, overwrite)
    device = compute_device(config.train.device)
    built = training_set(config, dataset if dataset is not None else load_dataset(config.data))
    poisoned, model, optimizer = _model_for(config, built.data, device)
    param_names = [n for n, _ in model.named_parameters()]
    writer = None
    if out is not None:
        writer = RunWriter.create(out, config, model.state_dict(), param_names, weight_layer_names(model), overwrite,
                                  provenance=run_provenance(device, built.digests), protection=built.protection)
    callbacks = _with_sal(config, callbacks)
    history: list[dict[str, float]] = []
    return _run_epochs(config, model, optimizer, poisoned, writer, device, callbacks, history, 0, progress, out)


def resume(path: str | Path, *, callbacks: Sequence[Callback] = (), progress: bool = False) -> TrainResult:
    """Continue an interrupted (killed, cancelled or failed) run file from its last finished epoch.

    The weights come from that epoch's snapshot, the optimizer state from the copy saved with it,
    the data order from (seed, epoch) as always, so on the CPU the run ends with the same weights,
    metrics and SAL as one never interrupted."""
    run = open_run(path)
    if run.status == "diverged":
        raise UlvizError(f"{path}: {run.message}; resuming would diverge again")
    config = run.config
    check_config(config)
    device = compute_device(config.train.device)
    # the images it trained on: its stored protection, or a regenerated one with a matching digest
    poisoned, model, optimizer = _model_for(config, run_training_data(run, load_dataset(config.data)), device)
    writer, done, blob = reopen_for_resume(path)
    try:
        model.load_state_dict(run.snapshot(done))
        if blob is not None:
            optimizer.load_state_dict(torch.load(io.BytesIO(blob), map_location=device, weights_only=True))
        elif done > 0:
            raise RunFileError(Path(path), f"has no optimizer state for epoch {done}; it cannot be resumed exactly")
        callbacks = _with_sal(config, callbacks)
        history = run.metrics.to_dict("records")
        if config.sal.estimator != "none" and done > 0 and done not in set(run.sal_epochs.tolist()):
            # killed between the epoch's snapshot and its SAL: measure it now, from the same weights
            ctx = EpochContext(done, model, poisoned, history[-1], writer, device, config)
            for cb in callbacks:
                cb(ctx)
    except BaseException:
        writer.set_status("interrupted", "resume failed before training")
        writer.close()
        raise
    return _run_epochs(config, model, optimizer, poisoned, writer, device, callbacks, history, done, progress, path)


def replay(path: str | Path, epochs: int, threads: int | None = None) -> TrainResult:
    """The first `epochs` epochs of the run file at `path` trained again, in memory, from its
    stored config (initial weights, data order and augmentation from its seeds, the lr schedule
    of its full length) on the images it trained on (read from the file and digest-checked by
    :func:`ulviz.protect.trainset.run_training_data`), without SAL, on `threads` CPU threads (None: as
    set). What `ulviz verify` compares. The thread count matters: the CPU splits each weight
    gradient's sum over the batch across threads, and the bundled clean demo's epoch-1 train loss
    retrains as 2.971 / 2.410 / 2.788 on 1 / 2 / 4 threads (it was made on 2)."""
    if threads is not None:
        if threads < 1:
            raise UlvizError(f"threads must be at least 1, got {threads}")
        with fixed_threads(threads):
            return replay(path, epochs)
    run = open_run(path)
    if not 1 <= epochs <= run.config.train.epochs:
        raise UlvizError(f"{path}: epochs to retrain must be in 1..{run.config.train.epochs}, got {epochs}")
    config = run.config
    check_config(config)
    device = compute_device(config.train.device)
    poisoned, model, optimizer = _model_for(config, run_training_data(run, load_dataset(config.data)), device)
    return _run_epochs(config, model, optimizer, poisoned, None, device, [], [], 0, False, None, last=epochs)


def check_config(config: RunConfig) -> None:
    """Refuse an unknown dataset, model, method, budget, task or defense in `config`, or a method
    or defense parameter it does not take or of the wrong type: one clear error before anything
    loads or a run file is written (the sweep planner checks every run of its grid with this)."""
    from ..protect.poisons import list_budgets, resolve_params
    if config.data.name not in list_datasets():
        raise UnknownNameError("dataset", config.data.name, list_datasets())
    if config.model.name not in list_models():
        raise UnknownNameError("model", config.model.name, list_models())
    resolve_params(config.poison.method, dict(config.poison.params))
    if config.poison.budget not in list_budgets():
        raise UnknownNameError("budget convention", config.poison.budget, list_budgets())
    check_task_model(config.train.task, config.model.name)
    check_defenses(config.train.defenses)
    check_numbers(config)


def run_provenance(device: torch.device, digests: dict) -> dict:
    """What a run file records of how it was made: the environment now and its inputs' digests."""
    return {"environment": environment(device), "digests": digests}


def _model_for(config: RunConfig, poisoned: Dataset, device: torch.device):
    """(`poisoned`: the task's protected, defended inputs and clean test set; the freshly
    initialized model on the device; its optimizer)."""
    check_task_model(config.train.task, config.model.name)
    model = build_model(config, poisoned).to(device)
    return poisoned, model, make_optimizer(config, model)


def _with_sal(config: RunConfig, callbacks: Sequence[Callback]) -> list[Callback]:
    return [*callbacks, sal_callback(config.sal)] if config.sal.estimator != "none" else list(callbacks)


def _run_epochs(config, model, optimizer, poisoned, writer, device, callbacks, history, done, progress, out,
                last: int | None = None):
    """Epochs done+1 .. `last` (config.train.epochs by default), after epoch 0 (the initial
    evaluation) for a fresh run."""
    status = "complete"
    try:
        if not history:  # a fresh run: epoch 0, the initial model, first
            _finish_epoch(0, model, poisoned, writer, device, config, callbacks, history, float("nan"), 0.0)
        bar = _progress(config.train.epochs, progress)
        if bar is not None:
            bar.update(done)
        for epoch in range(done + 1, (config.train.epochs if last is None else last) + 1):
            start = time.perf_counter()
            lr = lr_at(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            order, g = epoch_order(len(poisoned.x_train), config.train.seed, epoch)
            try:
                train_epoch(model, optimizer, poisoned.x_train, poisoned.y_train, order, config.train.batch_size,
                            device, config.train.augment, g, batch_defense(config.train.defenses, poisoned.num_classes, model))
            except DivergedError as e:
                status = "diverged"
                if writer:
                    writer.set_status("diverged", f"diverged at epoch {epoch}: {e}")
                break
            row = _finish_epoch(epoch, model, poisoned, writer, device, config, callbacks, history, lr,
                                time.perf_counter() - start, optimizer)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train_acc=f"{row['train_acc']:.3f}", test_acc=f"{row['test_acc']:.3f}")
        if bar is not None:
            bar.close()
        if writer and status == "complete":
            writer.set_status("complete")
    except KeyboardInterrupt:
        if writer:
            writer.set_status("cancelled", "stopped by the user")
        raise
    except BaseException as e:
        if writer:
            writer.set_status("failed", f"{type(e).__name__}: {e}")
        raise
    finally:
        if writer:
            writer.close()
    return TrainResult(model.cpu(), Path(out) if out else None, history, status)


def _finish_epoch(epoch, model, data, writer, device, config, callbacks, history, lr, seconds,
                  optimizer=None) -> dict:
    """Evaluate, append the row and snapshot (and the optimizer state, for resuming), run the
    callbacks; returns the row."""
    bs = max(config.train.batch_size, 512)
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train, bs, device)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test, bs, device)
    row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
           "test_acc": test_acc, "lr": lr, "seconds": seconds}
    history.append(row)
    if writer:
        if optimizer is not None:  # first: an epoch counts as finished only once its row is in
            buf = io.BytesIO()
            torch.save(optimizer.state_dict(), buf)
            writer.save_resume_state(epoch, buf.getvalue())
        writer.append_epoch(row, model.state_dict())
    ctx = EpochContext(epoch, model, data, row, writer, device, config)
    for cb in callbacks:
        cb(ctx)
    return row


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc="epochs", unit="epoch")
