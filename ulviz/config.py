"""Frozen dataclass configs for every stage of a run, to and from JSON.

A run file stores the whole :class:`RunConfig` as JSON on its root, so a run is self-describing:
anything needed to reproduce it (or to recompute an analysis) is read back from the file.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import UlvizError


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # dataset registry name: digits, mnist, cifar10, cifar100, npz, synthetic
    data_dir: str | None = None  # directory (or .npz file) for datasets read from local files
    allow_pickle: bool = False  # CIFAR python-batch layout is pickle: only loaded on this opt-in
    train_limit: int | None = None  # keep the first N training samples (after the fixed split)
    test_limit: int | None = None  # keep the first N test samples


@dataclass(frozen=True)
class PoisonConfig:
    method: str = "clean"  # unlearnable-method registry name; "clean" is the identity
    ratio: float = 1.0  # fraction of the training set that is protected
    seed: int = 0  # seed of the method's randomness (noise, surrogate init, patch choice)
    params: dict = field(default_factory=dict)  # method-specific parameters (eps, steps, ...)
    budget: str = "standard"  # budget convention: standard (the papers'), energy, mnist (ulviz.poisons.scaled_params)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet5"  # model registry name: linear, mlp, lenet5, cnn, resnet18
    width: int | None = None  # base width (hidden units / first-stage channels); None = model default


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum (ignored by adam)
    weight_decay: float = 5e-4  # L2 penalty added by the optimizer
    schedule: str = "cosine"  # learning-rate schedule over epochs: constant, cosine, step
    batch_size: int = 64  # minibatch size
    epochs: int = 30  # number of passes over the training set
    seed: int = 0  # seeds the initial weights and every epoch's data order
    device: str = "auto"  # "auto" (cuda, then mps, then cpu) or a torch device string
    recipe: str = "quick"  # the named recipe these fields came from (ulviz.recipes): quick or paper
    augment: str = "none"  # training-batch augmentation: none, crop (pad 4), crop_flip (pad 4 + mirror)
    task: str = "classify"  # what is learned from the images: classify, rotation, segment (ulviz.tasks)
    defenses: list = field(default_factory=list)  # the trainer's defenses, in order: [{"name", "params"}] (ulviz.defenses)


@dataclass(frozen=True)
class SALConfig:
    estimator: str = "none"  # per-epoch SAL during training: "exact", "fast" or "none"
    iters: int = 10  # rounds of the min/max search
    lr_min: float = 0.1  # step size of the descent copy
    lr_max: float = 0.1  # step size of the ascent copy
    eps: float = 0.05  # relative radius: ||W - W0|| <= eps * ||W0||
    batch_size: int = 256  # minibatch size of the search and its evaluations
    split: str = "train"  # "train" (the data the run trained on) or "test" (clean test set)
    subset: int | None = None  # use only the first N samples of the split
    shuffle: bool = False  # reshuffle the data each round (numbers then depend on the seed)
    seed: int = 0  # seed of the shuffling


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"  # a label shown in tables and legends
    data: DataConfig = field(default_factory=DataConfig)  # which dataset
    poison: PoisonConfig = field(default_factory=PoisonConfig)  # how the training set is protected
    model: ModelConfig = field(default_factory=ModelConfig)  # which architecture
    train: TrainConfig = field(default_factory=TrainConfig)  # how it is trained
    sal: SALConfig = field(default_factory=SALConfig)  # SAL measured after every epoch

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return _from_dict(cls, d)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise UlvizError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _from_dict(cls, d: Any):
    """Build a (nested) dataclass from a dict, refusing unknown keys so typos are not ignored."""
    if not isinstance(d, dict):
        raise UlvizError(f"{cls.__name__} expects a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise UlvizError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in d.items():
        sub = _DATACLASS_FIELDS.get((cls, name))
        kwargs[name] = _from_dict(sub, value) if sub is not None else value
    return cls(**kwargs)


_DATACLASS_FIELDS = {
    (RunConfig, "data"): DataConfig,
    (RunConfig, "poison"): PoisonConfig,
    (RunConfig, "model"): ModelConfig,
    (RunConfig, "train"): TrainConfig,
    (RunConfig, "sal"): SALConfig,
}


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as JSON when it can be (numbers, true/false), else a string."""
    if "=" not in text:
        raise UlvizError(f"expected key=value, got {text.strip()!r}")
    key, value = (part.strip() for part in text.split("=", 1))
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def checked_params(owner: str, params: dict, defaults: dict, kinds: dict | None = None) -> dict:
    """`defaults` updated with `params`, after refusing a parameter `owner` (e.g. "method 'em'")
    does not take or a value of the wrong type, so a typo is one clear error before anything
    runs, not a failure midway. A parameter takes its default's type, or ``kinds[key]`` where the
    default is None (and only there may the value be None)."""
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        takes = ", ".join(defaults) or "no parameters"
        raise UlvizError(f"{owner} does not take {', '.join(unknown)}; it takes {takes}")
    for key, value in params.items():
        default = defaults[key]
        kind = type(default) if default is not None else (kinds or {}).get(key)
        if (value is None and default is None) or kind is None:
            continue
        if not _is_kind(value, kind):
            raise UlvizError(f"{owner}: {key} must be {_KIND_NAMES.get(kind, kind.__name__)}, got {value!r}")
    return {**defaults, **params}


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _is_kind(value, kind: type) -> bool:
    """Whether `value` is of `kind`. An integer is a number too; a bool is neither, since a
    typo'd flag reads as `true` in JSON and TOML, not as 1."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)
