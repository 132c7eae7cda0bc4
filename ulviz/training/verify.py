"""`ulviz verify`: does a run file reproduce here?

Three checks, each reported line by line as ``ok``, ``DIFFERS`` or ``note``:

1. inputs: the clean training set loaded now and the protected one as trained (the file's stored
   protection, or the protection regenerated now) against the digests the file recorded;
2. training: the first K epochs retrained from the stored config on the images it trained on
   (:func:`ulviz.training.loop.replay`), metrics of epochs 0..K and the weights after epoch K against
   the file's, exactly (or within `tolerance`);
3. environment: every recorded field (versions, code revision, device, threads, determinism
   settings) that differs from this process's, listed as a note: it does not fail verification
   by itself, it says why the numbers in 2 may differ.

The verdict is ok only when every input digest and every compared number matches. A file written
before provenance was recorded has no digests: its inputs are reported "not recorded" and only
the retraining is judged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UlvizError
from ..core.provenance import RESULT_FIELDS, data_digest, environment
from ..data.datasets import load_dataset
from ..protect.trainset import protected_images
from ..store.runs import open_run
from .loop import replay

COMPARED = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")  # `seconds` is the machine's, not the run's


@dataclass
class Verification:
    """What `verify` found: one (status, text) per check; ok when nothing DIFFERS."""

    path: Path
    lines: list[tuple[str, str]] = field(default_factory=list)  # status: ok | DIFFERS | note

    @property
    def ok(self) -> bool:
        return all(status != "DIFFERS" for status, _ in self.lines)

    def add(self, status: str, text: str) -> None:
        self.lines.append((status, text))

    def text(self) -> str:
        body = "\n".join(f"{status:<8} {text}" for status, text in self.lines)
        verdict = "verified: everything compared matches" if self.ok else "NOT verified: see the DIFFERS lines"
        return f"{body}\n{verdict}"


def verify_run(path: str | Path, epochs: int = 1, tolerance: float = 0.0, threads: int | None = None) -> Verification:
    """Check the run file at `path` against its inputs and a retraining of its first `epochs`
    epochs (see the module docstring) on `threads` CPU threads: by default the count the file
    recorded (it changes training's rounding), else this process's. A missing or damaged file
    raises RunFileError; anything that differs is reported, not raised."""
    if tolerance < 0:
        raise UlvizError(f"tolerance must be at least 0, got {tolerance}")
    run = open_run(path)
    if not 1 <= epochs <= run.epochs_done:
        raise UlvizError(f"{run.path}: it has trained epochs 1..{run.epochs_done}; cannot retrain {epochs}")
    report = Verification(run.path)
    _environment(run, report)
    if _inputs(run, report):
        _retraining(run, epochs, tolerance, threads, report)
    return report


def _environment(run, report: Verification) -> None:
    recorded = run.provenance.get("environment")
    if recorded is None:
        report.add("note", "environment: not recorded (written before ulviz recorded provenance)")
        return
    here = environment(run.config.train.device if run.config.train.device != "auto" else _device_here())
    diffs = [f"{k} {recorded.get(k)!r} recorded, {here.get(k)!r} here" for k in sorted(set(recorded) | set(here))
             if recorded.get(k) != here.get(k)]
    if not diffs:
        report.add("ok", "environment: every recorded field is the same here")
    for d in diffs:
        key = d.split(" ", 1)[0]
        report.add("note", f"environment: {d}" + ("  (can change results)" if key in RESULT_FIELDS else ""))


def _device_here() -> str:
    from ..core.devices import select_device
    return str(select_device())


def _inputs(run, report: Verification) -> bool:
    """Check the input digests; whether retraining can go on (the clean data loads and matches)."""
    digests = run.provenance.get("digests", {})
    try:
        clean = load_dataset(run.config.data)
    except UlvizError as e:
        report.add("DIFFERS", f"clean training set: cannot be loaded here ({e})")
        return False
    now = data_digest(clean.x_train, clean.y_train)
    if not _digest_line(report, "clean training set", digests.get("clean_train"), now):
        return False
    source = "stored in the file" if run.protection_info else "regenerated here"
    try:
        protected_images(run, clean)  # rebuilt and checked against the recorded digest
    except UlvizError as e:
        report.add("DIFFERS", f"protected training set ({source}): {e}")
        return False
    if digests.get("protected_train") is None:
        report.add("note", f"protected training set ({source}): no digest recorded, nothing to check against")
    else:
        report.add("ok", f"protected training set ({source}): sha256 {digests['protected_train'][:12]} as recorded")
    return True


def _digest_line(report: Verification, what: str, recorded: str | None, now: str) -> bool:
    if recorded is None:
        report.add("note", f"{what}: no digest recorded (sha256 here {now[:12]})")
        return True
    if recorded != now:
        report.add("DIFFERS", f"{what}: sha256 {recorded[:12]} recorded, {now[:12]} here "
                              f"(the data directory holds other images than the run trained on)")
        return False
    report.add("ok", f"{what}: sha256 {now[:12]} as recorded")
    return True


def _retraining(run, epochs: int, tolerance: float, threads: int | None, report: Verification) -> None:
    recorded = run.provenance.get("environment", {}).get("torch_threads")
    threads = threads if threads is not None else recorded
    result = replay(run.path, epochs, threads)
    used = threads if threads is not None else torch.get_num_threads()
    why = ("as recorded" if threads == recorded and recorded is not None
           else "none recorded: this process's count" if recorded is None else f"{recorded} recorded")
    report.add("note", f"retrained epochs 1..{epochs} on {used} CPU thread(s) ({why})")
    stored = run.metrics.set_index("epoch")
    for row in result.history:
        e = int(row["epoch"])
        same, differ = [], []
        for name in COMPARED:
            a, b = float(stored.loc[e, name]), float(row[name])
            if (np.isnan(a) and np.isnan(b)) or abs(a - b) <= tolerance:
                same.append(f"{name} {a:.6g}")
            else:
                differ.append(f"epoch {e} {name}: {a!r} recorded, {b!r} retrained (|diff| {abs(a - b):.3g})")
        if same:
            report.add("ok", f"epoch {e} " + ", ".join(same) + (" as recorded" if not differ else ""))
        for line in differ:
            report.add("DIFFERS", line)
    weights = run.snapshot(epochs)
    now = result.model.state_dict()
    worst = max(float(np.max(np.abs(weights[k].double().numpy() - now[k].double().numpy()), initial=0.0))
                for k in weights)
    status = "ok" if worst <= tolerance else "DIFFERS"
    report.add(status, f"weights after epoch {epochs}: " + ("identical" if worst == 0 else f"max |diff| {worst:.3g}"))


def reusable_run(path: str | Path, config) -> bool:
    """Whether the run file at `path` may stand in for training `config` again: complete, of the
    same config (its name aside), made by this very code (ulviz.core.provenance.code_digest: the
    package's source, exact in a dirty checkout too) and on the inputs this machine would give it
    (the clean and protected training sets' digests checked). Never on the config alone: an
    earlier benchmark trained on images protected twice under the same config."""
    from dataclasses import replace

    from ..core.provenance import code_digest
    try:
        run = open_run(path)
    except UlvizError:
        return False
    if run.status != "complete" or replace(run.config, name=config.name) != config:
        return False
    digests = run.provenance.get("digests", {})
    if run.provenance.get("environment", {}).get("code_digest") != code_digest() or not digests:
        return False
    try:
        clean = load_dataset(run.config.data)
        if data_digest(clean.x_train, clean.y_train) != digests.get("clean_train"):
            return False
        protected_images(run, clean)  # refuses a protected set whose digest differs
    except UlvizError:
        return False
    return True
