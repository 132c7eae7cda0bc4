"""What a run trains on, built in one place for training, SAL, landscapes, resume and verify alike.

The clean dataset's training images are protected by the run's unlearnable method, then passed
through the trainer's data defenses (jpeg, grayscale, ...), then turned into the run's task's
inputs and targets (class labels, rotations, masks from the clean images); the test set stays
clean. A low room: it imports the poisons, defenses, tasks and the run-file store, nothing above.

Protections travel with the run. Training records digests of the clean training set and of the
protected one as trained (after data defenses), and stores the protection itself when it cannot
be re-derived bit for bit (:func:`must_store`: the methods that train a surrogate, and imported
files). Everything computed afterwards from a run file goes through :func:`run_training_data`,
which uses the stored protection, or regenerates a procedural one, and checks both digests: a
mismatch is one clear error, never a silent recomputation. Files written before digests were
recorded are read as before (nothing to check against).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..core.errors import UlvizError
from ..core.provenance import data_digest
from ..data.datasets import Dataset
from ..data.tasks import task_dataset
from ..store.protection import StoredProtection
from ..store.runs import Run
from .defenses import defend_data
from .poisons import Poison, make_poison, method_info


@dataclass
class TrainingSet:
    """A run's training data as built for training, with what a run file records of it."""

    data: Dataset  # the task's data: protected, defended training inputs; clean test set
    digests: dict  # clean_train, protected_train (after data defenses), poison_key, protection_stored
    protection: StoredProtection | None  # what the run file stores of the protection, or None


def must_store(method: str) -> bool:
    """Whether a run of `method` stores its protected images: a surrogate-trained method's output
    depends on float rounding (thread count, kernels, code), an imported file may change; the
    others are functions of the clean data and the seed, regenerated and checked by digest."""
    return method == "import" or method_info(method).trained


def training_set(config, clean: Dataset) -> TrainingSet:
    """The training data of the run `config` (a RunConfig) made from `clean`, for training it."""
    poison = make_poison(config.poison, clean)
    defended = defend_data(poison.x_train, config.train.defenses)
    stored = _stored(poison, clean) if must_store(config.poison.method) else None
    digests = {"clean_train": data_digest(clean.x_train, clean.y_train),
               "protected_train": data_digest(defended, clean.y_train),
               "poison_key": poison.info.get("cache_key"), "protection_stored": stored is not None,
               "poison_generation_threads": poison.info.get("generation_threads")}
    return TrainingSet(_task_data(config, clean, defended), digests, stored)


def training_data(config, clean: Dataset, protected: bool = True) -> Dataset:
    """The task data of the run `config` (a RunConfig) from the `clean` dataset, protection
    generated now; with `protected=False` its training inputs are the clean images (no poison, no
    defense). For a run file's data use :func:`run_training_data`."""
    if not protected:
        return _task_data(config, clean, clean.x_train)
    return _task_data(config, clean, defend_data(make_poison(config.poison, clean).x_train, config.train.defenses))


def run_training_data(run: Run, clean: Dataset, protected: bool = True) -> Dataset:
    """The task data of the run file `run` on exactly the images it trained on: `clean` (its
    dataset, loaded now) checked against the recorded digest, its protection read from the file
    (or regenerated when the file stores none) and checked after the data defenses."""
    config = run.config
    check_digest(run, "clean_train", data_digest(clean.x_train, clean.y_train))
    if not protected:
        return _task_data(config, clean, clean.x_train)
    return _task_data(config, clean, protected_images(run, clean))


def protected_images(run: Run, clean: Dataset) -> torch.Tensor:
    """The run's training images as trained (protected, defended), digest-checked."""
    x = run.stored_protection(clean.x_train)
    if x is None:
        recorded = run.provenance.get("digests", {}).get("protected_train")
        if recorded is None and method_info(run.config.poison.method).trained:
            # a trained protection of a file written before ulviz stored them: a regeneration can
            # neither be trusted (it depends on the code, torch and threads) nor checked (no digest)
            raise UlvizError(f"{run.path}: its {run.config.poison.method} protection was not stored and no digest was "
                             "recorded (a run file from before ulviz stored trained protections), so the images it "
                             "trained on cannot be re-derived; retrain it to measure on them")
        x = make_poison(run.config.poison, clean).x_train
    x = defend_data(x, run.config.train.defenses)
    check_digest(run, "protected_train", data_digest(x, clean.y_train))
    return x


_WHAT = {"clean_train": "clean training set", "protected_train": "protected training set"}
_HINT = {"clean_train": "does the data directory hold other images than it trained on?",
         "protected_train": "this ulviz regenerates its protection differently (another code version, "
                            "torch or thread count); the run file stores none to read instead"}


def check_digest(run: Run, key: str, now: str) -> None:
    """Refuse, in one line, data whose digest differs from the one `run` recorded as `key`
    (nothing to check in a file that recorded none)."""
    recorded = run.provenance.get("digests", {}).get(key)
    if recorded is not None and recorded != now:
        raise UlvizError(f"{run.path}: the {_WHAT[key]} differs from the one this run trained on "
                         f"(sha256 {recorded[:12]} recorded, {now[:12]} now): {_HINT[key]}")


def _stored(poison: Poison, clean: Dataset) -> StoredProtection:
    p = poison.patterns
    return StoredProtection(clean.x_train.numpy(), poison.x_train.numpy(), poison.indices.numpy(),
                            None if p is None else p.numpy(), None if p is None else poison.pattern_of.numpy())


def _task_data(config, clean: Dataset, x_train: torch.Tensor) -> Dataset:
    if x_train.shape != clean.x_train.shape:
        raise UlvizError(f"protected training set has shape {tuple(x_train.shape)}, expected {tuple(clean.x_train.shape)}")
    return task_dataset(config.train.task, replace(clean, x_train=x_train), clean, config.train.seed)
