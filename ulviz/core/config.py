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


def _limits(default, *, ge=None, gt=None, le=None, lt=None):
    """A numeric field's default, with the range :func:`check_numbers` holds it to (None, where
    the field may be None, is always allowed)."""
    return field(default=default, metadata={"limits": (ge, gt, le, lt)})


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"  # dataset registry name: digits, mnist, cifar10, cifar100, npz, synthetic
    data_dir: str | None = None  # directory (or .npz file) for datasets read from local files
    allow_pickle: bool = False  # CIFAR python-batch layout is pickle: only loaded on this opt-in
    train_limit: int | None = _limits(None, ge=1)  # keep the first N training samples (after the fixed split)
    test_limit: int | None = _limits(None, ge=1)  # keep the first N test samples


@dataclass(frozen=True)
class PoisonConfig:
    method: str = "clean"  # unlearnable-method registry name; "clean" is the identity
    ratio: float = _limits(1.0, gt=0, le=1)  # fraction of the training set that is protected
    seed: int = _limits(0, ge=0)  # seed of the method's randomness (noise, surrogate init, patch choice)
    params: dict = field(default_factory=dict)  # method-specific parameters (eps, steps, ...)
    budget: str = "standard"  # budget convention: standard (the papers'), energy, mnist (ulviz.protect.poisons.scaled_params)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lenet5"  # model registry name: linear, mlp, lenet5, cnn, resnet18
    width: int | None = _limits(None, ge=1)  # base width (hidden units / first-stage channels); None = model default


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = _limits(0.05, gt=0)  # peak learning rate
    momentum: float = _limits(0.9, ge=0, lt=1)  # SGD momentum (ignored by adam)
    weight_decay: float = _limits(5e-4, ge=0)  # L2 penalty added by the optimizer
    schedule: str = "cosine"  # learning-rate schedule over epochs: constant, cosine, step
    batch_size: int = _limits(64, ge=1)  # minibatch size
    epochs: int = _limits(30, ge=1)  # number of passes over the training set
    seed: int = _limits(0, ge=0)  # seeds the initial weights and every epoch's data order
    device: str = "auto"  # "auto" (cuda, then mps, then cpu) or a torch device string
    recipe: str = "quick"  # the named recipe these fields came from (ulviz.data.recipes): quick or paper
    augment: str = "none"  # training-batch augmentation: none, crop (pad 4), crop_flip (pad 4 + mirror)
    task: str = "classify"  # what is learned from the images: classify, rotation, segment (ulviz.data.tasks)
    defenses: list = field(default_factory=list)  # the trainer's defenses, in order: [{"name", "params"}] (ulviz.protect.defenses)


@dataclass(frozen=True)
class SALConfig:
    estimator: str = "none"  # per-epoch SAL during training: "exact", "fast" or "none"
    iters: int = _limits(10, ge=1)  # rounds of the min/max search
    lr_min: float = _limits(0.1, gt=0)  # step size of the descent copy
    lr_max: float = _limits(0.1, gt=0)  # step size of the ascent copy
    eps: float = _limits(0.05, gt=0)  # relative radius: ||W - W0|| <= eps * ||W0||
    batch_size: int = _limits(256, ge=1)  # minibatch size of the search and its evaluations
    split: str = "train"  # "train" (the data the run trained on) or "test" (clean test set)
    subset: int | None = _limits(None, ge=1)  # use only the first N samples of the split
    shuffle: bool = False  # reshuffle the data each round (numbers then depend on the seed)
    seed: int = _limits(0, ge=0)  # seed of the shuffling


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


def check_numbers(config, where: str = "") -> None:
    """Refuse a numeric field of `config` (any of the dataclasses above, nested ones included) of
    the wrong type or outside its range, naming it by its dotted path ("train.epochs must be at
    least 1, got -1"): a zero batch size or a negative epoch count is one clear error before
    anything runs, never an empty "complete" run or a traceback midway."""
    for f in dataclasses.fields(config):
        value, name = getattr(config, f.name), f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_numbers(value, name + ".")
        elif "limits" in f.metadata and value is not None:
            _check_number(name, value, int if str(f.type).startswith("int") else float, *f.metadata["limits"])


def _check_number(name: str, value, kind: type, ge, gt, le, lt) -> None:
    import math
    if not _is_kind(value, kind) or (kind is float and not math.isfinite(value)):
        raise UlvizError(f"{name} must be {'a finite number' if kind is float else 'an integer'}, got {value!r}")
    for bound, ok, words in ((ge, lambda b: value >= b, "at least"), (gt, lambda b: value > b, "greater than"),
                             (le, lambda b: value <= b, "at most"), (lt, lambda b: value < b, "less than")):
        if bound is not None and not ok(bound):
            raise UlvizError(f"{name} must be {words} {bound}, got {value!r}")
