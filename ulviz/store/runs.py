"""The run file: one HDF5 file per run, written while training and read by everything after it.

Layout (schema ``ulviz.run``, version 1)::

    /                      attrs: schema, schema_version, ulviz_version, created, config (JSON),
                                  writer_pid, writer_host
    /status                scalar bytes: running | complete | failed | cancelled | diverged
    /message               scalar bytes: detail for the status ("diverged at epoch 3", an error)
    /metrics/<name>        (epochs+1,)  epoch, train_loss, train_acc, test_loss, test_acc, lr, seconds
    /snapshots/<tensor>    (epochs+1, *shape) every parameter and buffer; row 0 = initial weights
                           attrs on the group: names (JSON, model order), kinds (param|buffer)
    /sal/<part>            (rows, layers) sal, s_max, s_min, acc_drop, acc_rise; /sal/epoch (rows,)
                           attrs: layers (JSON), settings (JSON of the SAL config that filled it)
    /resume                blob (2, n) uint8, length (2,), epoch (2,): the optimizer state saved
                           after each epoch (torch.save bytes, read back with weights_only=True),
                           in two alternating slots so one is always whole
    /landscapes/<key>      cached loss landscapes (:mod:`ulviz.store.caches`)
    /sharpness/<measure>   the sharpness atlas (:mod:`ulviz.store.analyses`)
    /protection            the protected training images the run trained on (before data defenses),
                           stored when they cannot be re-derived exactly (:mod:`ulviz.store.protection`)

Root attribute ``provenance`` (JSON, since ulviz 0.1 with issue 25; absent in older files): the
environment (``ulviz.core.provenance.environment``) and the digests of the inputs (clean training set,
protected training set as trained, the poison's cache key, whether the protection is stored).

String attributes are stored as fixed-length bytes (see :func:`ulviz.store.files._fixed`).

Every per-epoch dataset is created before the first epoch, then the file switches to SWMR mode
(single writer, multiple readers): each epoch is appended and flushed, readers open the file with
``swmr=True`` while it grows, and a writer killed at any moment leaves every flushed epoch
readable. The number of finished epochs is the shortest per-epoch dataset, so an epoch cut off
between two appends is simply not counted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch

from ..core.config import RunConfig
from ..core.errors import RunFileError, UlvizError
from ..core.provenance import __version__, tensor_digest
from .files import (_append_row, _as_str, _fixed, _h5file, _json_attr, _reader, _scalar_str, check_run_file,
                    open_for_update, writer_alive)
from .protection import StoredProtection, _protection_info, _read_protection, _write_protection
from .tables import _is_tables_file


SCHEMA = "ulviz.run"
SCHEMA_VERSION = 1
METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")
SAL_PARTS = ("sal", "s_max", "s_min", "acc_drop", "acc_rise")
STATUSES = ("running", "complete", "failed", "cancelled", "diverged", "interrupted")


# -- writing ---------------------------------------------------------------------------------

def check_new_run_path(path: str | Path, overwrite: bool = False) -> Path:
    """`path` as a Path, after refusing one that exists (unless `overwrite`) or whose directory
    does not: a mistyped --out is one clear error, never a directory made at the filesystem root."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise RunFileError(path, "already exists; choose another --out or pass --overwrite")
    if path.is_dir():
        raise RunFileError(path, "is a directory; give a file name such as run.h5")
    if not path.parent.is_dir():
        raise RunFileError(path, f"its directory {path.parent} does not exist; create it first (mkdir -p {path.parent})")
    return path


class RunWriter:
    """Appends epochs to a new run file. Use :meth:`create`, then :meth:`append_epoch` per epoch."""

    def __init__(self, path: Path, h5: h5py.File):
        self.path, self._f = path, h5

    @classmethod
    def create(cls, path: str | Path, config: RunConfig, state: dict[str, torch.Tensor],
               param_names: list[str], layer_names: list[str], overwrite: bool = False, *,
               provenance: dict | None = None, protection: "StoredProtection | None" = None) -> "RunWriter":
        """A new run file for a model whose state_dict is `state`, ready for SWMR appends; with
        the run's `provenance` and its `protection` stored when given."""
        path = check_new_run_path(path, overwrite)
        f = _h5file(path, "w", libver="latest")
        try:
            _init_layout(f, config, state, param_names, layer_names)
            if provenance is not None:
                f.attrs["provenance"] = _fixed(json.dumps(provenance, sort_keys=True, default=str))
            if protection is not None:
                _write_protection(f, protection)
            f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        return cls(path, f)

    def append_epoch(self, metrics: dict[str, float], state: dict[str, torch.Tensor]) -> None:
        """Append one row of metrics and one snapshot of every tensor, then flush to disk."""
        snaps = self._f["snapshots"]
        for name in _json_attr(snaps, "names"):
            _append_row(snaps[name], state[name].detach().cpu().numpy())
        # metrics last: a reader counting rows sees the epoch only once its snapshot is there
        for name in METRICS:
            _append_row(self._f["metrics"][name], metrics[name])
        self._f.flush()

    def append_sal(self, epoch: int, parts: dict[str, np.ndarray]) -> None:
        """Append the SAL of every layer at `epoch` (arrays of length n_layers), then flush."""
        _append_sal(self._f, epoch, parts)
        self._f.flush()

    def save_resume_state(self, epoch: int, blob: bytes) -> None:
        """Keep what resuming after `epoch` needs (optimizer state), in the slot the previous
        epoch did not use; the slot's epoch is written last, so a kill mid-write leaves the
        other slot, and the previous epoch, intact."""
        r = self._f["resume"]
        slot = epoch % 2
        data = np.frombuffer(blob, dtype=np.uint8)
        if r["blob"].shape[1] < len(data):
            r["blob"].resize(len(data), axis=1)
        r["epoch"][slot] = -1
        r["blob"][slot, :len(data)] = data
        r["length"][slot] = len(data)
        self._f.flush()
        r["epoch"][slot] = epoch
        self._f.flush()

    def set_status(self, status: str, message: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._f["status"][()] = np.bytes_(status)
        self._f["message"][()] = np.bytes_(message.encode("utf-8")[:1000])
        self._f.flush()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def reopen_for_resume(path: str | Path) -> tuple["RunWriter", int, bytes | None]:
    """Reopen an interrupted run file to continue it: (writer, last finished epoch, the saved
    optimizer state for that epoch or None). Rows past the last finished epoch (cut off by the
    kill) are dropped, the status goes back to "running" and the file back to SWMR appends."""
    path = check_run_file(path)
    run = open_run(path)
    if run.status == "complete":
        raise RunFileError(path, "is complete; nothing to resume")
    with _reader(path) as f:
        if "resume" not in f:
            raise RunFileError(path, "was written without resume state (an older ulviz); it cannot be resumed")
    with open_for_update(path):  # clears the crashed writer's flag, or refuses a live writer
        pass
    done = len(run.metrics) - 1
    f = _h5file(path, "a", libver="latest")
    try:
        for name in METRICS:
            f["metrics"][name].resize(done + 1, axis=0)
        for name in run.tensor_names:
            f["snapshots"][name].resize(done + 1, axis=0)
        g = f["sal"]
        keep = int(np.searchsorted(np.array(g["epoch"][:len(run.sal_epochs)]), done, side="right"))
        for name in ("epoch", *SAL_PARTS):
            g[name].resize(keep, axis=0)
        r = f["resume"]
        slots = np.array(r["epoch"])
        blob = None
        if done in slots:
            slot = int(np.flatnonzero(slots == done)[0])
            blob = np.array(r["blob"][slot, :int(r["length"][slot])]).tobytes()
        f.attrs.update({"writer_pid": os.getpid(), "writer_host": _fixed(socket.gethostname())})
        f["status"][()] = np.bytes_("running")
        f["message"][()] = np.bytes_(f"resumed after epoch {done}")
        f.swmr_mode = True
    except BaseException:
        f.close()
        raise
    return RunWriter(path, f), done, blob


def _init_layout(f: h5py.File, config: RunConfig, state, param_names, layer_names) -> None:
    f.attrs.update({
        "schema": _fixed(SCHEMA), "schema_version": SCHEMA_VERSION, "ulviz_version": _fixed(__version__),
        "created": _fixed(datetime.now(timezone.utc).isoformat(timespec="seconds")),
        "config": _fixed(config.to_json()), "writer_pid": os.getpid(), "writer_host": _fixed(socket.gethostname()),
    })
    f.create_dataset("status", data=np.bytes_("running"), dtype="S16")
    f.create_dataset("message", data=np.bytes_(""), dtype="S1024")
    m = f.create_group("metrics")
    for name in METRICS:
        m.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,), dtype="i8" if name == "epoch" else "f8")
    snaps = f.create_group("snapshots")
    names = list(state)
    snaps.attrs["names"] = _fixed(json.dumps(names))
    snaps.attrs["kinds"] = _fixed(json.dumps(["param" if n in param_names else "buffer" for n in names]))
    for name, t in state.items():
        a = t.detach().cpu().numpy()
        snaps.create_dataset(name, shape=(0, *a.shape), maxshape=(None, *a.shape), chunks=(1, *a.shape) if a.size else None, dtype=a.dtype)
    _create_sal_group(f, layer_names, config.sal)
    r = f.create_group("resume")  # two slots, written alternately: one always holds a whole state
    r.create_dataset("blob", shape=(2, 0), maxshape=(2, None), chunks=(1, 1 << 16), dtype="u1")
    r.create_dataset("length", data=np.zeros(2, dtype="i8"))
    r.create_dataset("epoch", data=np.full(2, -1, dtype="i8"))


def _create_sal_group(f: h5py.File, layer_names: list[str], settings) -> None:
    g = f.create_group("sal")
    g.attrs["layers"] = _fixed(json.dumps(layer_names))
    g.attrs["settings"] = _fixed(json.dumps(settings if isinstance(settings, dict) else dataclasses.asdict(settings)))
    n = max(len(layer_names), 1)
    g.create_dataset("epoch", shape=(0,), maxshape=(None,), chunks=(256,), dtype="i8")
    for part in SAL_PARTS:
        g.create_dataset(part, shape=(0, len(layer_names)), maxshape=(None, len(layer_names)), chunks=(64, n), dtype="f8")


def _append_sal(f: h5py.File, epoch: int, parts: dict[str, np.ndarray]) -> None:
    g = f["sal"]
    for part in SAL_PARTS:
        _append_row(g[part], np.asarray(parts[part], dtype=np.float64))
    _append_row(g["epoch"], epoch)  # last, so a reader never sees an epoch without its values


# -- reading ---------------------------------------------------------------------------------

@dataclass
class Run:
    """A run file read back: config, metrics table, layers, SAL; snapshots are read on demand."""

    path: Path
    config: RunConfig
    status: str  # running | complete | failed | cancelled | diverged | interrupted
    message: str  # detail of the status
    metrics: pd.DataFrame  # one row per finished epoch, epoch 0 = the initial model
    tensor_names: list[str]  # every parameter and buffer, in the model's order
    param_names: list[str]  # the trainable parameters among them
    layer_names: list[str]  # the Conv/Linear weight tensors (the layers SAL measures)
    sal_epochs: np.ndarray  # epochs that have SAL rows
    sal: dict[str, np.ndarray]  # part -> (len(sal_epochs), len(layer_names))
    sal_settings: dict  # the SAL config that produced those rows
    created: str
    ulviz_version: str
    shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # tensor name -> shape
    provenance: dict = dataclasses.field(default_factory=dict)  # environment and input digests; {} = not recorded
    protection_info: dict = dataclasses.field(default_factory=dict)  # the stored protection: encoding, digest, bytes; {} = none

    def stored_protection(self, clean_x: torch.Tensor) -> torch.Tensor | None:
        """The protected training images (before data defenses) stored in the file, rebuilt on
        `clean_x` (the clean training images, whose digest the caller has checked); None when
        the file stores none. A rebuild that misses the stored digest is a RunFileError."""
        if not self.protection_info:
            return None
        with _reader(self.path) as f:
            x = _read_protection(f["protection"], np.ascontiguousarray(clean_x.detach().cpu().numpy(), dtype=np.float32))
        out = torch.from_numpy(x)
        if tensor_digest(out) != self.protection_info["digest"]:
            raise RunFileError(self.path, "its stored protection does not rebuild the images it trained on "
                                          "(digest mismatch): the file or the clean data is damaged")
        return out

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def epochs_done(self) -> int:
        """Training epochs finished (the initial evaluation, epoch 0, not counted)."""
        return max(len(self.metrics) - 1, 0)

    def snapshot(self, epoch: int = -1) -> dict[str, torch.Tensor]:
        """The model's state_dict at `epoch` (0 = initial weights, -1 = last finished epoch)."""
        n = len(self.metrics)
        row = epoch if epoch >= 0 else n + epoch
        if not 0 <= row < n:
            raise RunFileError(self.path, f"has epochs 0..{n - 1}; epoch {epoch} is not stored")
        with _reader(self.path) as f:
            snaps = f["snapshots"]
            return {name: torch.from_numpy(np.array(snaps[name][row])) for name in self.tensor_names}

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each stored tensor's shape."""
        return dict(self.shapes)

    def weights_path(self, name: str) -> np.ndarray:
        """One tensor's values at every finished epoch: shape (epochs+1, *tensor shape)."""
        if name not in self.tensor_names:
            raise RunFileError(self.path, f"has no tensor {name!r}")
        with _reader(self.path) as f:
            return np.array(f["snapshots"][name][: len(self.metrics)])

    def sal_frame(self, part: str = "sal") -> pd.DataFrame:
        """SAL part as a table: one row per epoch with SAL, one column per layer."""
        return pd.DataFrame(self.sal[part], index=pd.Index(self.sal_epochs, name="epoch"), columns=self.layer_names)


def open_run(path: str | Path) -> Run:
    """Read a run file. Anything wrong with it raises :class:`RunFileError` naming the file."""
    path = check_run_file(path)
    try:
        with _reader(path) as f:
            return _read_run(path, f)
    except UlvizError:
        raise
    except Exception as e:  # h5py raises many types on damaged files; the user needs one message
        raise RunFileError(path, f"damaged or incomplete run file ({type(e).__name__}: {e})") from None


def _read_run(path: Path, f: h5py.File) -> Run:
    schema = f.attrs.get("schema")
    if schema is None:
        raise RunFileError(path, "is an HDF5 file but not a ulviz run file (no 'schema' attribute; written by another program?)")
    if _as_str(schema) != SCHEMA:
        raise RunFileError(path, f"has schema {_as_str(schema)!r}, not {SCHEMA!r}; it was written by another program")
    version = int(f.attrs.get("schema_version", -1))
    if version > SCHEMA_VERSION:
        raise RunFileError(path, f"was written with run-file schema {version}, newer than this ulviz reads ({SCHEMA_VERSION}); upgrade ulviz")
    if version < 1:
        raise RunFileError(path, f"has an invalid schema version {version}")
    for required in ["status", "message", *(f"metrics/{m}" for m in METRICS), "snapshots", "sal/epoch",
                     *(f"sal/{p}" for p in SAL_PARTS)]:
        if required not in f:
            raise RunFileError(path, f"is missing {required!r}")
    config = RunConfig.from_json(_as_str(f.attrs["config"]))
    # status before rows: the writer flushes an epoch's rows before it marks the run complete, so
    # a reader racing it must look in the same order to never see "complete" with an epoch missing
    status, message = _scalar_str(f["status"]), _scalar_str(f["message"])

    snaps = f["snapshots"]
    tensor_names = _json_attr(snaps, "names")
    kinds = _json_attr(snaps, "kinds")
    if len(kinds) != len(tensor_names) or any(n not in snaps for n in tensor_names):
        raise RunFileError(path, "snapshot names do not match the stored tensors")
    # finished epochs = the shortest per-epoch dataset (a kill between appends leaves one longer)
    n = min([f["metrics"][m].shape[0] for m in METRICS] + [snaps[t].shape[0] for t in tensor_names])
    metrics = pd.DataFrame({m: np.array(f["metrics"][m][:n]) for m in METRICS})
    metrics["epoch"] = metrics["epoch"].astype(int)

    g = f["sal"]
    layers = _json_attr(g, "layers")
    rows = min([g["epoch"].shape[0]] + [g[p].shape[0] for p in SAL_PARTS])
    sal = {p: np.array(g[p][:rows]) for p in SAL_PARTS}
    if any(v.ndim != 2 or v.shape[1] != len(layers) for v in sal.values()):
        raise RunFileError(path, f"SAL arrays do not have one column per layer ({len(layers)})")

    if status == "running" and not writer_alive(path):
        status = "interrupted"
    return Run(
        path=path, config=config, status=status, message=message, metrics=metrics,
        tensor_names=tensor_names, param_names=[t for t, k in zip(tensor_names, kinds) if k == "param"],
        layer_names=layers, sal_epochs=np.array(g["epoch"][:rows], dtype=int), sal=sal,
        sal_settings=json.loads(_as_str(g.attrs.get("settings", "{}"))),
        created=_as_str(f.attrs.get("created", "")), ulviz_version=_as_str(f.attrs.get("ulviz_version", "")),
        shapes={t: tuple(int(v) for v in snaps[t].shape[1:]) for t in tensor_names},
        provenance=json.loads(_as_str(f.attrs["provenance"])) if "provenance" in f.attrs else {},
        protection_info=_protection_info(f),
    )


def find_runs(directory: str | Path) -> list[Path]:
    """Run files (*.h5) under `directory`, outside hidden folders, sorted by path. ulviz's own
    summary files (:func:`write_tables`, such as the bundled data/studies/defenses-cifar10.h5) are
    not runs and are left out; anything else unreadable stays in, for the caller to report."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        return []
    # hidden folders (.jobs, .cache, a .venv) hold no runs of the user's, but may hold HDF5 files
    return sorted(p for p in d.rglob("*.h5")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(d).parts)
                  and not _is_tables_file(p))


def runs_table(paths: list[Path]) -> pd.DataFrame:
    """A summary row per run file; files that cannot be read get their error in the table."""
    rows = []
    for p in paths:
        try:
            r = open_run(p)
            last = r.metrics.iloc[-1] if len(r.metrics) else None
            rows.append({
                "file": str(p), "name": r.name, "method": r.config.poison.method, "model": r.config.model.name,
                "dataset": r.config.data.name, "task": r.config.train.task,
                "defenses": ", ".join(d["name"] for d in r.config.train.defenses) or "-",
                "epochs": f"{r.epochs_done}/{r.config.train.epochs}",
                "status": r.status, "train_acc": None if last is None else last.train_acc,
                "test_acc": None if last is None else last.test_acc, "error": "",
            })
        except UlvizError as e:
            rows.append({"file": str(p), "name": p.stem, "status": "unreadable", "error": str(e)})
    return pd.DataFrame(rows)


# -- labels and renaming -------------------------------------------------------------------

def run_labels(items) -> list[str]:
    """One label per run, the rule every page and table uses: the run's name, or
    ``name (file.h5)`` when several of `items` share that name (``name (dir/file.h5)`` when their
    file names are shared too). `items`: Runs, (name, path) pairs, or run-file paths (read for
    their name; an unreadable file is labelled by its file name without the suffix)."""
    pairs = [_name_and_path(item) for item in items]
    groups: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(pairs):
        groups.setdefault(name, []).append(i)
    labels = [name for name, _ in pairs]
    for name, members in groups.items():
        if len(members) > 1:
            for i, tail in zip(members, _distinct_tails([pairs[i][1] for i in members])):
                labels[i] = f"{name} ({tail})"
    return labels


def _name_and_path(item) -> tuple[str, Path]:
    if isinstance(item, Run):
        return item.name, Path(item.path)
    if isinstance(item, tuple):
        return str(item[0]), Path(item[1])
    try:
        return open_run(item).name, Path(item)
    except UlvizError:
        return Path(item).stem, Path(item)


def _distinct_tails(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each path that tell them apart (the file name if it can)."""
    parts = [Path(p).parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-depth:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in paths]  # the same file given twice: nothing tells them apart


def rename_run(path: str | Path, name: str) -> RunConfig:
    """Give a run file another display name (the `name` of the config stored on its root);
    nothing else changes. Refused while a job is still writing the file. Returns the new config."""
    name = name.strip()
    if not name:
        raise UlvizError("a run name cannot be empty")
    if len(name) > 200:
        raise UlvizError(f"a run name has at most 200 characters, not {len(name)}")
    if open_run(path).status == "running":  # "running" only while its writer is alive
        raise RunFileError(Path(path), "is still being written by a running job; rename it when it ends")
    with open_for_update(path) as f:
        config = dataclasses.replace(RunConfig.from_json(_as_str(f.attrs["config"])), name=name)
        f.attrs["config"] = _fixed(config.to_json())
    return config
