"""What a run trains on, built in one place for training, SAL and landscapes alike.

The clean dataset's training images are protected by the run's unlearnable method, then passed
through the trainer's data defenses (jpeg, grayscale, ...), then turned into the run's task's
inputs and targets (class labels, rotations, masks from the clean images); the test set stays
clean. A low room: it imports the poisons, defenses and tasks, and nothing above them.
"""
from __future__ import annotations

from dataclasses import replace

from .data import Dataset
from .defenses import defend_data
from .poisons import make_poison
from .tasks import task_dataset


def training_data(config, clean: Dataset, protected: bool = True) -> Dataset:
    """The task data of the run `config` (a RunConfig) from the `clean` dataset; with
    `protected=False` its training inputs are the clean images (no poison, no defense)."""
    inputs = clean
    if protected:
        x = defend_data(make_poison(config.poison, clean).x_train, config.train.defenses)
        inputs = replace(clean, x_train=x)
    return task_dataset(config.train.task, inputs, clean, config.train.seed)
