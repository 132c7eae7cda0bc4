"""What a network learns from the (possibly protected) images: a registry of tasks.

The paper's opening finding is that unlearnable examples made against classification still teach
other tasks on the same images. A task turns a dataset into inputs and targets for one
cross-entropy loss, so training, SAL and landscapes run unchanged on any task:

- ``classify``: the dataset's labels (the default; what the protections are made against);
- ``rotation``: 4-way rotation prediction (0, 90, 180, 270 degrees; Gidaris et al. 2018), the
  standard self-supervised pretext task. The label is the rotation, so the protection's class
  labels play no part. RotNet feeds all four rotations of every image; here each training image
  gets one rotation, drawn once from the run's seed (a quarter of the cost, the same expected
  gradient), and the clean test set is scored on all four rotations of every image;
- ``segment``: foreground segmentation of grayscale digit sets: the target of each pixel is
  whether the *clean* image is brighter than :data:`MASK_THRESHOLD` there, so a protection that
  changes the pixels does not change the masks; scored by foreground IoU. It needs a fully
  convolutional model (``fcn``) that outputs one map per class.

Every task keeps the test inputs clean: the question is always what was learned that carries to
clean data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..core.errors import UlvizError, UnknownNameError
from .datasets import Dataset

MASK_THRESHOLD = 0.5  # a pixel of a clean image brighter than this is foreground


@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[[Dataset, Dataset, int], Dataset]  # (training inputs, clean data, seed) -> the task's data
    metric: str  # what its test score is: accuracy or IoU
    outputs: Callable[[Dataset], int]  # the head's outputs for a dataset (classes, 4 rotations, 2 masks)
    dense: bool = False  # one target per pixel (the model must be fully convolutional)


_TASKS: dict[str, Task] = {}


def list_tasks() -> list[str]:
    return list(_TASKS)


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise UnknownNameError("task", name, list_tasks())
    return _TASKS[name]


def task_dataset(name: str, train: Dataset, clean: Dataset, seed: int = 0) -> Dataset:
    """The data of task `name`: training inputs from `train` (maybe protected), targets and test
    set from `clean`. num_classes is the number of outputs the task's head needs."""
    return get_task(name).make(train, clean, seed)


DENSE_MODELS = ("fcn",)  # the models that output one map per class (for dense tasks)


def check_task_model(task: str, model: str) -> None:
    """Refuse a model whose output does not fit the task's targets (maps vs one vector per image)."""
    dense = get_task(task).dense
    if dense and model not in DENSE_MODELS:
        raise UlvizError(f"task {task!r} predicts a map per pixel: use a fully convolutional model ({', '.join(DENSE_MODELS)})")
    if not dense and model in DENSE_MODELS:
        raise UlvizError(f"model {model!r} outputs maps; task {task!r} needs one prediction per image")


def _register(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


def _classify(train: Dataset, clean: Dataset, seed: int) -> Dataset:
    return train


def rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each image x[i] rotated by k[i] quarter turns counter-clockwise (square images)."""
    out = torch.empty_like(x)
    for q in range(4):
        sel = k == q
        if sel.any():
            out[sel] = torch.rot90(x[sel], q, dims=(-2, -1))
    return out


def _rotation(train: Dataset, clean: Dataset, seed: int) -> Dataset:
    h, w = train.x_train.shape[-2:]
    if h != w:
        raise UlvizError(f"rotation needs square images, got {h}x{w}")
    g = torch.Generator().manual_seed(seed)
    k_train = torch.randint(0, 4, (len(train.x_train),), generator=g)
    n = len(clean.x_test)
    k_test = torch.arange(4).repeat_interleave(n)
    x_test = rotate(clean.x_test.repeat(4, 1, 1, 1), k_test)
    return replace(train, x_train=rotate(train.x_train, k_train), y_train=k_train, x_test=x_test, y_test=k_test,
                   num_classes=4)


def foreground_masks(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) int64: 1 where the grayscale image is brighter than MASK_THRESHOLD."""
    if x.shape[1] != 1:
        raise UlvizError(f"segment is for grayscale digit sets (1 channel), got {x.shape[1]} channels")
    return (x[:, 0] > MASK_THRESHOLD).long()


def _segment(train: Dataset, clean: Dataset, seed: int) -> Dataset:
    return replace(train, y_train=foreground_masks(clean.x_train), x_test=clean.x_test,
                   y_test=foreground_masks(clean.x_test), num_classes=2)


def iou(logits: torch.Tensor, masks: torch.Tensor) -> float:
    """Foreground intersection over union of the predicted masks (argmax over the class maps)."""
    pred = logits.argmax(1) == 1
    truth = masks == 1
    union = (pred | truth).sum().item()
    return (pred & truth).sum().item() / union if union else 1.0


_register(Task("classify", _classify, "accuracy", lambda d: d.num_classes))
_register(Task("rotation", _rotation, "accuracy", lambda d: 4))
_register(Task("segment", _segment, "IoU", lambda d: 2, dense=True))
