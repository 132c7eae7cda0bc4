"""Layer surgery: does a layer matter causally for what a protection takes away?

Three operations on a protected run (all on private copies; run files are only read):

- ``transplant``: the protected model at an epoch, with the chosen layers (and the batch-norm
  that follows each of them: its affine weights and running statistics) replaced by the clean
  run's at the same epoch; reported: its clean-test accuracy.
- ``reset``: the protected model at an epoch with the chosen layers (and their batch-norms)
  re-initialised (a fresh draw of the architecture's initialisation, seeded), then only those
  trained for `steps` SGD steps on the clean or the protected training data. Every other tensor
  stays bit-identical: its batch-norms run in eval mode, so their statistics do not move.
- ``freeze``: the protected run retrained from its initial weights on the protected data for
  `steps` steps, with the chosen layers (and their batch-norms) fixed at the clean run's values at
  the epoch: does the rest of the network still learn the shortcut around clean layers?

Training here uses the run's optimizer settings (SGD with its momentum and weight decay, or Adam)
at its peak learning rate (constant), its batch size and augmentation; the trainer's batch
defenses are not applied. Layers are chosen by a SPEC (:func:`select_layers`): names or prefixes,
or ranked by SAL.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..core.config import _limits, check_numbers
from ..core.devices import compute_device
from ..core.errors import UlvizError, UnknownNameError
from ..data.recipes import augment_batch
from ..models.registry import build_model, create_model
from ..models.steps import evaluate
from .sharpness import run_data

OPS = ("transplant", "reset", "freeze")
SAL_RULES = ("sal-top", "sal-bottom", "sal-diff")
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class SurgeryConfig:
    op: str = "transplant"  # transplant, reset or freeze
    layers: str = "all"  # SPEC: names / prefixes (comma list), all, none, sal-top:k, sal-bottom:k, sal-diff:k
    epoch: int = -1  # the epoch operated on (-1 = the protected run's last)
    steps: int = _limits(200, ge=0)  # SGD steps of reset (fine-tuning) and freeze (retraining)
    data: str = "clean"  # reset's training data: "clean" or "protected" (freeze always trains on protected)
    seed: int = _limits(1, ge=0)  # seeds the re-initialisation and the batch order


@dataclass
class SurgeryResult:
    """What one operation did and the clean-test accuracy it led to."""

    op: str  # transplant, reset or freeze
    epoch: int  # the epoch of the runs operated on
    layers: list[str]  # the weight layers chosen
    tensors: list[str]  # the state-dict entries copied / re-initialised and trained / frozen
    accuracy: float  # clean-test accuracy of the operated model
    loss: float  # its clean-test loss
    protected_accuracy: float  # the protected model at `epoch`, untouched
    clean_accuracy: float  # the clean run's model at `epoch` (NaN without a clean run)
    steps: int  # training steps taken (0 for transplant)
    data: str  # what reset / freeze trained on ("" for transplant)
    state: dict = field(repr=False, default_factory=dict)  # the operated model's state dict

    @property
    def restored(self) -> float:
        """(accuracy - protected) / (clean - protected): 0 = nothing restored, 1 = clean accuracy."""
        gap = self.clean_accuracy - self.protected_accuracy
        return (self.accuracy - self.protected_accuracy) / gap if gap else float("nan")


# -- choosing layers --------------------------------------------------------------------------

def select_layers(spec: str, protected, clean=None) -> list[str]:
    """The weight layers (names as in ``run.layer_names``) a SPEC picks in the `protected` run:

    - ``all``, ``none``;
    - a comma list of layer names or prefixes at a dot boundary (``layer1`` = every layer in
      stage 1; ``conv1`` = the stem's conv, not ``layer1.0.conv1``; ``linear.weight`` itself);
    - ``sal-top:k`` / ``sal-bottom:k``: the k layers with the highest / lowest SAL in the protected
      run (mean over its SAL epochs): the most / least learnable under the protection;
    - ``sal-diff:k``: the k layers whose mean SAL differs most from the clean run's (needs `clean`).
    """
    names = list(protected.layer_names)
    spec = (spec or "").strip()
    if spec in ("all", "none"):
        return names if spec == "all" else []
    rule, _, k = spec.partition(":")
    if rule in SAL_RULES:
        return _by_sal(rule, _count(spec, k, len(names)), protected, clean)
    if not spec:
        raise UlvizError("empty layer SPEC; name layers (e.g. layer1,linear), or use all, none, sal-top:k, "
                         "sal-bottom:k or sal-diff:k")
    chosen = []
    for item in (s.strip() for s in spec.split(",")):
        hits = [n for n in names if n == item or n.startswith(item + ".")]
        if not item or not hits:
            raise UlvizError(f"no layer matches {item!r}; the layers are {', '.join(names)}")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in names if n in chosen]  # in the model's order


def _count(spec: str, k: str, most: int) -> int:
    try:
        value = int(k)
    except ValueError:
        raise UlvizError(f"{spec!r}: the count after ':' must be an integer, e.g. sal-top:5") from None
    if not 0 <= value <= most:
        raise UlvizError(f"{spec!r}: the count must be between 0 and {most} (the number of layers)")
    return value


def mean_sal(run) -> np.ndarray:
    """Each layer's SAL averaged over the run's SAL epochs; a clear error when it has none."""
    if len(run.sal_epochs) == 0:
        raise UlvizError(f"{run.path}: no SAL stored; compute it with `ulviz sal {run.path} --epochs ...`")
    return run.sal["sal"].mean(axis=0)


def _by_sal(rule: str, k: int, protected, clean) -> list[str]:
    names = list(protected.layer_names)
    if rule == "sal-diff":
        if clean is None:
            raise UlvizError("sal-diff needs the clean run (--clean CLEAN.h5)")
        if list(clean.layer_names) != names:
            raise UlvizError("sal-diff needs two runs of the same architecture")
        score = np.abs(mean_sal(protected) - mean_sal(clean))
    else:
        score = mean_sal(protected) * (1 if rule == "sal-top" else -1)
    order = np.argsort(-score, kind="stable")[:k]
    return [names[i] for i in sorted(order)]


def layer_tensors(model: nn.Module, layers: list[str]) -> list[str]:
    """The state-dict entries that belong to the weight `layers` of `model`: each layer's module
    (weight, bias) and the batch-norm that follows it before the next Conv/Linear, in the
    modules' registration order (a ResNet's conv1 -> bn1, shortcut.0 -> shortcut.1)."""
    modules = list(model.named_modules())
    owned: dict[str, list[str]] = {}
    current = None
    for name, module in modules:
        if isinstance(module, _LAYER_TYPES):
            current = name
            owned[current] = [name]
        elif isinstance(module, _NORM_TYPES) and current is not None and len(owned[current]) == 1:
            owned[current].append(name)
    keys = []
    for layer in layers:
        module_name = layer.rsplit(".", 1)[0] if "." in layer else ""
        if module_name not in owned:
            raise UlvizError(f"{layer!r} is not a Conv/Linear weight of the model")
        for m in owned[module_name]:
            prefix = f"{m}." if m else ""
            keys += [prefix + k for k in dict(modules)[m].state_dict()]
    return [k for k in model.state_dict() if k in set(keys)]


# -- the operations ---------------------------------------------------------------------------

def layer_surgery(protected_path, clean_path=None, config: SurgeryConfig = SurgeryConfig(), *,
                  device=None) -> SurgeryResult:
    """Run `config.op` on the protected run file with the clean run file (needed by transplant,
    freeze and sal-diff) and report the clean-test accuracy."""
    from ..store.runs import open_run

    check_surgery(config)
    protected = open_run(protected_path)
    clean = open_run(clean_path) if clean_path is not None else None
    if config.op in ("transplant", "freeze") and clean is None:
        raise UlvizError(f"{config.op} needs the clean run (--clean CLEAN.h5)")
    layers = select_layers(config.layers, protected, clean)
    epoch = resolve_epoch(config.epoch, protected, clean)
    if config.op == "transplant":
        return transplant(protected, clean, layers, epoch, device=device)
    if config.op == "reset":
        return reset(protected, layers, epoch, config.steps, config.data, config.seed, clean=clean, device=device)
    return freeze(protected, clean, layers, epoch, config.steps, config.seed, device=device)


def check_surgery(config: SurgeryConfig) -> None:
    if config.op not in OPS:
        raise UnknownNameError("surgery operation", config.op, list(OPS))
    if config.data not in ("clean", "protected"):
        raise UlvizError(f"surgery data must be 'clean' or 'protected', got {config.data!r}")
    check_numbers(config)


def resolve_epoch(epoch: int, protected, clean=None) -> int:
    """`epoch` (-1 = the protected run's last), checked to exist in both runs."""
    e = protected.epochs_done if epoch == -1 else epoch
    for run in (protected, clean):
        if run is not None and not 0 <= e <= run.epochs_done:
            raise UlvizError(f"{run.path}: no epoch {e} (it has epochs 0..{run.epochs_done})")
    return e


class Patient:
    """A protected run with its data loaded once: the clean test set, and the training sets on demand."""

    def __init__(self, run, device=None):
        self.run, self.device = run, compute_device(device)
        self.clean_data = run_data(run, protected=False)  # clean training images, clean test set
        self._protected_data = None

    @property
    def protected_data(self):
        if self._protected_data is None:  # generating (or reading the cache of) the protection costs
            self._protected_data = run_data(self.run, protected=True)
        return self._protected_data

    def model(self, state: dict) -> nn.Module:
        model = build_model(self.run.config, self.clean_data)
        model.load_state_dict(state)
        return model.to(self.device)

    def test(self, model: nn.Module) -> tuple[float, float]:
        """(loss, accuracy) on the clean test set, evaluated as training logs test_acc."""
        d = self.clean_data
        return evaluate(model, d.x_test, d.y_test, max(self.run.config.train.batch_size, 512), self.device)


def _same_architecture(protected, clean) -> None:
    if clean.config.model != protected.config.model or clean.tensor_names != protected.tensor_names \
            or clean.shapes != protected.shapes:
        raise UlvizError(f"{clean.path} and {protected.path} are not the same architecture; surgery needs twins")


def transplant(protected, clean, layers: list[str], epoch: int, *, patient: Patient | None = None,
               device=None) -> SurgeryResult:
    """The protected model at `epoch` with `layers` (and their batch-norms) taken from the clean
    run at `epoch`; its clean-test accuracy."""
    _same_architecture(protected, clean)
    patient = patient or Patient(protected, device)
    state, donor = protected.snapshot(epoch), clean.snapshot(epoch)
    keys = layer_tensors(patient.model(state), layers)
    out = {**state, **{k: donor[k] for k in keys}}
    loss, acc = patient.test(patient.model(out))
    return SurgeryResult("transplant", epoch, list(layers), keys, acc, loss, _stored_acc(protected, epoch),
                         _stored_acc(clean, epoch), 0, "", out)


def _stored_acc(run, epoch: int) -> float:
    return float(run.metrics.set_index("epoch").loc[epoch, "test_acc"])


def reset(protected, layers: list[str], epoch: int, steps: int, data: str = "clean", seed: int = 1, *,
          clean=None, patient: Patient | None = None, device=None) -> SurgeryResult:
    """The protected model at `epoch` with `layers` re-initialised (a fresh seeded draw of the
    architecture's initialisation) and only they trained for `steps` steps on `data`."""
    patient = patient or Patient(protected, device)
    state = protected.snapshot(epoch)
    model = patient.model(state)
    keys = layer_tensors(model, layers)
    torch.manual_seed(seed)
    d = patient.clean_data
    fresh = create_model(protected.config.model.name, d.image_shape, d.num_classes, protected.config.model.width)
    model.load_state_dict({**state, **{k: fresh.state_dict()[k] for k in keys}})
    train_set = patient.clean_data if data == "clean" else patient.protected_data
    _train_only(model, keys, train_set, protected.config, steps, seed, patient.device)
    loss, acc = patient.test(model)
    return SurgeryResult("reset", epoch, list(layers), keys, acc, loss, _stored_acc(protected, epoch),
                         _stored_acc(clean, epoch) if clean is not None else float("nan"), steps, data,
                         _cpu_state(model))


def freeze(protected, clean, layers: list[str], epoch: int, steps: int, seed: int = 1, *,
           patient: Patient | None = None, device=None) -> SurgeryResult:
    """The protected run retrained from its initial weights on its protected data for `steps`
    steps, with `layers` (and their batch-norms) fixed at the clean run's values at `epoch`."""
    _same_architecture(protected, clean)
    patient = patient or Patient(protected, device)
    start, donor = protected.snapshot(0), clean.snapshot(epoch)
    model = patient.model(start)
    keys = layer_tensors(model, layers)
    model.load_state_dict({**start, **{k: donor[k] for k in keys}})
    trainable = [k for k in model.state_dict() if k not in set(keys)]
    _train_only(model, trainable, patient.protected_data, protected.config, steps, seed, patient.device)
    loss, acc = patient.test(model)
    return SurgeryResult("freeze", epoch, list(layers), keys, acc, loss, _stored_acc(protected, epoch),
                         _stored_acc(clean, epoch), steps, "protected", _cpu_state(model))


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _train_only(model: nn.Module, keys: list[str], data, config, steps: int, seed: int, device) -> None:
    """`steps` minibatch steps that change only the state entries `keys`: the other parameters
    are left out of the optimizer, and every batch-norm owning none of `keys` runs in eval mode
    (its running statistics stay as they are)."""
    keys = set(keys)
    params = [p for n, p in model.named_parameters() if n in keys]
    for n, p in model.named_parameters():
        p.requires_grad_(n in keys)
    if not params or steps == 0:
        return
    t = config.train
    opt = torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay) \
        if t.optimizer == "sgd" else torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    g = torch.Generator().manual_seed(seed)
    x, y = data.x_train, data.y_train
    order = torch.randperm(len(x), generator=g)
    done, i = 0, 0
    while done < steps:
        if i >= len(order):
            order, i = torch.randperm(len(x), generator=g), 0
        idx = order[i:i + t.batch_size]
        i += t.batch_size
        xb, yb = x[idx].to(device), y[idx].to(device)
        if t.augment != "none":
            xb = augment_batch(xb, t.augment, g)
        _set_modes(model, keys)
        loss = F.cross_entropy(model(xb), yb)
        if not torch.isfinite(loss):
            raise UlvizError(f"surgery training diverged at step {done} (loss {loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
    model.eval()


def _set_modes(model: nn.Module, keys: set) -> None:
    """Train mode for modules with a trained entry, eval mode for the others (batch-norm
    statistics and dropout of untouched modules stay fixed)."""
    model.eval()
    for name, module in model.named_modules():
        if not list(module.children()):
            prefix = f"{name}." if name else ""
            if any(prefix + k in keys for k, _ in module.named_parameters(recurse=False)):
                module.train()


# -- random halves, for the study --------------------------------------------------------------

def random_layers(names: list[str], k: int, seed: int) -> list[str]:
    """`k` of `names` drawn at random (seeded), in the model's order."""
    pick = set(random.Random(seed).sample(list(names), k))
    return [n for n in names if n in pick]


def blocks(names: list[str]) -> dict[str, list[str]]:
    """The weight layers grouped by their top-level module, in model order (a ResNet: conv1 = the
    stem, layer1..layer4 = the stages, linear = the head); a Sequential's children one by one."""
    out: dict[str, list[str]] = {}
    for n in names:
        out.setdefault(n.split(".")[0], []).append(n)
    return out


def block_transplants(protected, clean, epoch: int = -1, *, patient: Patient | None = None,
                      device=None) -> "pd.DataFrame":
    """One transplant per block (:func:`blocks`): block, layers, accuracy, restored fraction."""
    import pandas as pd
    epoch = resolve_epoch(epoch, protected, clean)
    patient = patient or Patient(protected, device)
    rows = []
    for block, layers in blocks(list(protected.layer_names)).items():
        r = transplant(protected, clean, layers, epoch, patient=patient)
        rows.append({"label": block, "layers": len(layers), "accuracy": r.accuracy, "restored": r.restored})
    return pd.DataFrame(rows)
