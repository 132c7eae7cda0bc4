"""The run file: one HDF5 file per run. The only module that imports h5py.

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
    /landscapes/<key>      cached loss landscapes, see "cached landscapes" below
    /protection            the protected training images the run trained on (before data defenses),
                           stored when they cannot be re-derived exactly: see "stored protections"

Root attribute ``provenance`` (JSON, since ulviz 0.1 with issue 25; absent in older files): the
environment (``ulviz.provenance.environment``) and the digests of the inputs (clean training set,
protected training set as trained, the poison's cache key, whether the protection is stored).

String attributes are stored as fixed-length bytes (see :func:`_fixed`).

Every per-epoch dataset is created before the first epoch, then the file switches to SWMR mode
(single writer, multiple readers): each epoch is appended and flushed, readers open the file with
``swmr=True`` while it grows, and a writer killed at any moment leaves every flushed epoch
readable. The number of finished epochs is the shortest per-epoch dataset, so an epoch cut off
between two appends is simply not counted.
"""
from __future__ import annotations

import ctypes
import dataclasses
import ctypes.util
import functools
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import pandas as pd
import torch

from .core.config import RunConfig
from .core.errors import RunFileError, UlvizError
from .core.provenance import __version__, tensor_digest

SCHEMA = "ulviz.run"
SCHEMA_VERSION = 1
METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds")
SAL_PARTS = ("sal", "s_max", "s_min", "acc_drop", "acc_rise")
STATUSES = ("running", "complete", "failed", "cancelled", "diverged", "interrupted")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# -- opening ---------------------------------------------------------------------------------

LOCK_WAIT_S = 10.0  # how long an open waits out another process's hold on a file (seconds)


def _h5file(path, mode: str, **kwargs) -> h5py.File:
    """``h5py.File(path, mode)``, waiting while another process holds HDF5's lock on the file.

    A plain reader holds a shared lock and a writer an exclusive one, each only for one read or
    one appended row here. Without the wait, the dashboard or a sweep polling a run made a
    resume or a post-hoc SAL row fail ("unable to lock file"), and a writer made a reader call
    the file corrupt. A lock held past LOCK_WAIT_S is raised as it came."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return h5py.File(path, mode, **kwargs)
        except OSError as e:
            if not _lock_busy(e) or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


def _lock_busy(error: OSError | str) -> bool:
    return "unable to lock file" in str(error)


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


def _fixed(text: str) -> np.bytes_:
    """A string attribute as fixed-length UTF-8 bytes. h5py writes a Python str as a variable-length
    string, whose bytes live in HDF5's global heap: unchecksummed, and a corrupted global heap can
    send the HDF5 library into an endless loop when the attribute is read (found by fuzzing).
    Fixed-length values sit in the checksummed object header instead."""
    return np.bytes_(text.encode("utf-8"))


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


def _append_row(ds: h5py.Dataset, value) -> None:
    n = ds.shape[0]
    ds.resize(n + 1, axis=0)
    ds[n] = value


def _append_sal(f: h5py.File, epoch: int, parts: dict[str, np.ndarray]) -> None:
    g = f["sal"]
    for part in SAL_PARTS:
        _append_row(g[part], np.asarray(parts[part], dtype=np.float64))
    _append_row(g["epoch"], epoch)  # last, so a reader never sees an epoch without its values


@contextmanager
def open_for_update(path: str | Path) -> Iterator[h5py.File]:
    """The run file opened for appending an analysis (post-hoc SAL, caches).

    A writer killed while in SWMR mode leaves HDF5's "open for write" flag set, which refuses any
    later write. If the writer process is gone, the file is rewritten (every object copied, status
    set to "interrupted") into a fresh file that atomically replaces it, so nothing is lost.
    """
    path = Path(path)
    check_run_file(path)
    try:
        f = _h5file(path, "a")
    except OSError as e:
        if "already open for write" not in str(e):
            raise RunFileError(path, f"cannot open for writing ({e})") from None
        if writer_alive(path):
            raise RunFileError(path, "is still being written by a running job; wait until it ends") from None
        _rewrite_closed(path)
        f = _h5file(path, "a")
    try:
        yield f
    finally:
        f.close()


def _rewrite_closed(path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with _reader(path) as src, h5py.File(tmp, "w", libver="latest") as dst:
            for key in src:
                src.copy(src[key], dst, name=key)
            dst.attrs.update(dict(src.attrs))
            if _scalar_str(dst["status"]) == "running":
                dst["status"][()] = np.bytes_("interrupted")
                dst["message"][()] = np.bytes_("the writing process ended without closing the file")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def writer_alive(path: str | Path) -> bool:
    """Whether the process that created the run file is still running (on this host)."""
    try:
        with _reader(Path(path)) as f:
            pid, host = int(f.attrs.get("writer_pid", -1)), _as_str(f.attrs.get("writer_host", ""))
    except (RunFileError, OSError):
        return False
    if pid <= 0 or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_sal(path: str | Path, layer_names: list[str], settings: dict) -> list[int]:
    """Make the run file's SAL group hold `settings`; the epochs already computed with them.

    Rows made with other settings (or none) are dropped, so a file never mixes estimators. Rows
    made with the same settings are kept, which is what lets an interrupted computation resume.
    """
    with open_for_update(path) as f:
        g = f["sal"]
        same = (json.loads(_as_str(g.attrs["layers"])) == list(layer_names)
                and json.loads(_as_str(g.attrs["settings"])) == settings)
        if not same:
            del f["sal"]
            _create_sal_group(f, list(layer_names), settings)
        g = f["sal"]
        rows = min([g["epoch"].shape[0]] + [g[p].shape[0] for p in SAL_PARTS])
        return [int(e) for e in g["epoch"][:rows]]


def append_sal_row(path: str | Path, epoch: int, parts: dict[str, np.ndarray]) -> None:
    """Append one epoch's SAL to a finished run file; opened and closed per row, so a kill
    between rows (where the time is spent) never leaves the file open."""
    with open_for_update(path) as f:
        g = f["sal"]
        rows = min([g["epoch"].shape[0]] + [g[p].shape[0] for p in SAL_PARTS])
        for name in ("epoch", *SAL_PARTS):  # drop the tail of a row cut off by a kill
            if g[name].shape[0] > rows:
                g[name].resize(rows, axis=0)
        _append_sal(f, epoch, parts)


# -- stored protections --------------------------------------------------------------------
#
#    /protection            attrs: encoding, digest (ulviz.provenance.tensor_digest of the images),
#                           shape; the images are rebuilt on the clean training images x:
#      encoding "patterns": indices (k,), patterns (P, C, H, W) f4, pattern_of (k,):
#                           out = x; out[indices] = clip(x[indices] + patterns[pattern_of], 0, 1)
#      encoding "delta":    indices (k,) of the changed samples, delta (k, C, H, W) f4 (gzip + shuffle),
#                           or, when it takes at most 65536 distinct values (signed-gradient steps
#                           leave a few hundred), palette (V,) f4 and codes (k, C, H, W) u1 / u2
#                           (gzip) with delta = palette[codes]; fix_at / fix_value: the flat
#                           positions (in delta) where x + delta rounds off the stored image, and
#                           that image's values there:
#                           out = x; out[indices] = x[indices] + delta; out[indices].flat[fix_at] = fix_value
#
# Both rebuild the float32 images bit for bit (checked when written, and against the digest when
# read). Class-wise patterns cost P images; a sample-wise perturbation costs its changed samples,
# gzip-compressed (float noise has little to squeeze: see the README for measured sizes).

@dataclass
class StoredProtection:
    """What a run file stores of its protection (numpy float32 NCHW arrays)."""

    clean: np.ndarray  # the clean training images the protection was made from
    protected: np.ndarray  # the protected images (before data defenses), same shape
    indices: np.ndarray  # the protected samples (for patterns: those that wear one)
    patterns: np.ndarray | None = None  # a class-wise method's additive patterns (P, C, H, W), or None
    pattern_of: np.ndarray | None = None  # which pattern each of `indices` wears


def _write_protection(f: h5py.File, p: StoredProtection) -> None:
    g = f.create_group("protection")
    clean, protected = np.asarray(p.clean, dtype=np.float32), np.asarray(p.protected, dtype=np.float32)
    g.attrs.update(digest=_fixed(tensor_digest(torch.from_numpy(protected))), shape=np.array(protected.shape))
    if p.patterns is not None and _patterns_rebuild(clean, protected, p):
        g.attrs["encoding"] = _fixed("patterns")
        g.create_dataset("indices", data=np.asarray(p.indices, dtype=np.int64), **_gzip(len(p.indices)))
        g.create_dataset("patterns", data=np.asarray(p.patterns, dtype=np.float32), **_gzip(len(p.patterns)))
        g.create_dataset("pattern_of", data=np.asarray(p.pattern_of, dtype=np.int64), **_gzip(len(p.pattern_of)))
        return
    changed = np.flatnonzero((protected != clean).reshape(len(clean), -1).any(1))
    delta = protected[changed] - clean[changed]
    off = np.flatnonzero((clean[changed] + delta) != protected[changed])  # rounding of x + (x' - x)
    g.attrs["encoding"] = _fixed("delta")
    g.create_dataset("indices", data=changed.astype(np.int64), **_gzip(len(changed)))
    chunks = (max(1, min(len(changed), 64)), *delta.shape[1:]) if len(changed) else None
    palette, codes = np.unique(delta, return_inverse=True)
    if len(palette) <= 1 << 16:  # signed-gradient steps leave few distinct values: a code per value, a palette
        codes = codes.reshape(delta.shape).astype(np.uint8 if len(palette) <= 256 else np.uint16)
        g.create_dataset("codes", data=codes, chunks=chunks, **(_GZIP if len(changed) else {}))
        g.create_dataset("palette", data=palette.astype(np.float32))
    else:
        g.create_dataset("delta", data=delta, chunks=chunks, **(_GZIP if len(changed) else {}))
    g.create_dataset("fix_at", data=off.astype(np.int64))
    g.create_dataset("fix_value", data=protected[changed].reshape(-1)[off])


_GZIP = {"compression": "gzip", "compression_opts": 6, "shuffle": True}


def _gzip(n: int) -> dict:
    """gzip for a dataset of `n` rows (HDF5 cannot chunk, so cannot compress, an empty one)."""
    return _GZIP if n else {}


def _patterns_rebuild(clean: np.ndarray, protected: np.ndarray, p: StoredProtection) -> bool:
    """Whether the patterns give back `protected` exactly (else the delta encoding is used)."""
    out = clean.copy()
    idx = np.asarray(p.indices, dtype=np.int64)
    out[idx] = np.clip(clean[idx] + np.asarray(p.patterns, dtype=np.float32)[np.asarray(p.pattern_of)], 0, 1)
    return bool(np.array_equal(out, protected))


def _read_protection(g: h5py.Group, clean: np.ndarray) -> np.ndarray:
    if tuple(int(v) for v in g.attrs["shape"]) != clean.shape:
        raise ValueError(f"stored protection has shape {tuple(g.attrs['shape'])}, the clean images {clean.shape}")
    out = clean.copy()
    idx = np.array(g["indices"], dtype=np.int64)
    encoding = _as_str(g.attrs["encoding"])
    if encoding == "patterns":
        out[idx] = np.clip(clean[idx] + np.array(g["patterns"])[np.array(g["pattern_of"])], 0, 1)
    elif encoding == "delta":
        delta = np.array(g["palette"])[np.array(g["codes"])] if "codes" in g else np.array(g["delta"])
        part = clean[idx] + delta
        flat = part.reshape(-1)
        flat[np.array(g["fix_at"])] = np.array(g["fix_value"])
        out[idx] = part
    else:
        raise ValueError(f"unknown protection encoding {encoding!r}")
    return out


def _protection_info(f: h5py.File) -> dict:
    if "protection" not in f:
        return {}
    g = f["protection"]
    size = sum(d.id.get_storage_size() for d in g.values() if isinstance(d, h5py.Dataset))
    return {"encoding": _as_str(g.attrs["encoding"]), "digest": _as_str(g.attrs["digest"]), "bytes": int(size)}


# -- cached landscapes ---------------------------------------------------------------------
#
#    /landscapes/<key>      attrs: settings (JSON); coords_0 [, coords_1] (axes); loss, acc, done
#                           flat over the grid (row-major), NaN / False until a point is computed
#
# Points are written as they are computed and `done` marks them, so an interrupted grid resumes
# where it stopped and a partial grid is never taken for a complete one.

def landscape_key(settings: dict) -> str:
    """The cache key of a landscape: a hash of its settings (canonical JSON)."""
    import hashlib
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


def read_landscape(path: str | Path, settings: dict) -> dict | None:
    """The cached arrays for `settings` (coords, loss, acc, done), or None if never started."""
    path = check_run_file(path)
    key = landscape_key(settings)
    with _reader(path) as f:
        if "landscapes" not in f or key not in f["landscapes"]:
            return None
        g = f["landscapes"][key]
        try:
            axes = [np.array(g[f"coords_{i}"]) for i in range(2) if f"coords_{i}" in g]
            out = {"coords": axes, **{k: np.array(g[k]) for k in ("loss", "acc", "done")}}
        except KeyError as e:
            raise RunFileError(path, f"has a damaged landscape cache {key} ({e})") from None
    size = int(np.prod([len(a) for a in axes]))
    if any(out[k].shape != (size,) for k in ("loss", "acc", "done")):
        raise RunFileError(path, f"has a landscape cache {key} whose arrays do not match its axes")
    return out


def write_landscape_points(path: str | Path, settings: dict, coords: list[np.ndarray], index: np.ndarray,
                           loss: np.ndarray, acc: np.ndarray) -> None:
    """Store computed grid points (flat `index`) of the landscape `settings`, creating its group."""
    key = landscape_key(settings)
    size = int(np.prod([len(a) for a in coords]))
    opener = _open_landscape_cache if Path(path).suffix == LANDSCAPE_CACHE_SUFFIX else open_for_update
    with opener(path) as f:
        root = f.require_group("landscapes")
        if key not in root:
            g = root.create_group(key)
            g.attrs["settings"] = _fixed(json.dumps(settings, sort_keys=True))
            for i, a in enumerate(coords):
                g.create_dataset(f"coords_{i}", data=np.asarray(a, dtype=np.float64))
            g.create_dataset("loss", data=np.full(size, np.nan))
            g.create_dataset("acc", data=np.full(size, np.nan))
            g.create_dataset("done", data=np.zeros(size, dtype=bool))
        g = root[key]
        order = np.argsort(index)
        idx = np.asarray(index)[order]
        g["loss"][idx] = np.asarray(loss, dtype=np.float64)[order]
        g["acc"][idx] = np.asarray(acc, dtype=np.float64)[order]
        g["done"][idx] = True  # last: a point is done only once its values are in


LANDSCAPE_CACHE_SUFFIX = ".landscapes"  # HDF5, but not *.h5: never taken for a run file


def landscape_cache_path(data_dir: str | Path, run: "Run") -> Path:
    """Where the dashboard keeps the landscapes it computes for `run`: a file of its own under
    ``<data dir>/.cache/landscapes``, so run files (the bundled demo, a job's) are never written by
    browsing. Named after the run file's path and creation time: a rewritten run gets a new cache."""
    import hashlib
    key = hashlib.sha256(f"{Path(run.path).resolve()}|{run.created}".encode()).hexdigest()[:16]
    return Path(data_dir) / ".cache" / "landscapes" / f"{Path(run.path).stem}-{key}{LANDSCAPE_CACHE_SUFFIX}"


@contextmanager
def _open_landscape_cache(path: str | Path) -> Iterator[h5py.File]:
    """A landscape cache file opened for writing, created on first use; a damaged one (it holds
    only recomputable points) is replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = _h5file(path, "a")
    except OSError as e:
        if _lock_busy(e):  # in use, not damaged: never delete it for that
            raise RunFileError(path, f"is held by another process ({e})") from None
        path.unlink(missing_ok=True)
        f = _h5file(path, "a")
    try:
        yield f
    finally:
        f.close()


def list_landscapes(path: str | Path) -> list[dict]:
    """Settings of every cached landscape in a run file, with the fraction of points done."""
    path = check_run_file(path)
    out = []
    with _reader(path) as f:
        if "landscapes" not in f:
            return out
        for key, g in f["landscapes"].items():
            try:
                settings = json.loads(_as_str(g.attrs["settings"]))
                done = np.array(g["done"])
            except (KeyError, ValueError):
                continue  # a group cut off while being created: ignored, recomputed on demand
            out.append({**settings, "key": key, "complete": float(done.mean()) if done.size else 0.0})
    return out


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


def check_run_file(path: str | Path) -> Path:
    """`path` as a Path if it exists and starts like an HDF5 file; a clear RunFileError if not."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RunFileError(path, "no such file")
    if not path.is_file():
        raise RunFileError(path, "is not a file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head != _HDF5_SIGNATURE:
        raise RunFileError(path, "is not an HDF5 file (no HDF5 signature); is it a run file?")
    return path


@contextmanager
def _reader(path: Path) -> Iterator[h5py.File]:
    """Open read-only. A file still being appended to (or whose writer died) carries HDF5's
    "open for write" flag and is opened in SWMR-read mode instead."""
    f = _open_for_reading(path)
    try:
        yield f
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        # h5py's own errors while reading a damaged object (bad checksum, missing link, wrong
        # shape): every read goes through here, so they all become one error naming the file
        raise RunFileError(path, f"is damaged: {e}") from None
    finally:
        f.close()


def _open_for_reading(path: Path, attempts: int = 20) -> h5py.File:
    """Plain read-only open, else SWMR read for a file a writer holds. A writer extending the
    file can leave its end behind the size the superblock promises for a moment ("truncated
    file"): that is retried for about a second before the file is called truncated."""
    for attempt in range(attempts):
        try:
            return _h5file(path, "r")
        except OSError as e:
            message = str(e)
        if "already open for write" in message:
            return _open_swmr_read(path)
        if _lock_busy(message):
            raise RunFileError(path, f"is held by another process for longer than {LOCK_WAIT_S:.0f} s ({message})")
        if "truncated file" not in message or attempt == attempts - 1:
            raise RunFileError(path, f"cannot be opened as HDF5 (truncated or corrupt?): {message}")
        try:
            return _open_swmr_read(path)
        except RunFileError:
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _open_swmr_read(path: Path) -> h5py.File:
    # A SWMR reader retries a metadata read whose checksum fails (the writer may be mid-flush),
    # by default 100 times with growing sleeps: on a damaged file that looks like a hang. Ten
    # tries cover a live writer's flush and turn damage into an error within a second.
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    lib = _hdf5_library()
    if lib is not None:
        lib.H5Pset_metadata_read_attempts(ctypes.c_int64(fapl.id), ctypes.c_uint(10))
    try:
        fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
    except OSError as e:
        raise RunFileError(path, f"cannot be opened as HDF5 (truncated or corrupt?): {e}") from None
    return h5py.File(fid)


@functools.lru_cache(maxsize=1)
def _hdf5_library():
    """The HDF5 C library h5py runs on (for the one setting h5py does not wrap), or None."""
    candidates = sorted(Path(h5py.__file__).parent.parent.glob("h5py.libs/libhdf5-*.so*"))
    candidates += [Path(p) for p in filter(None, [ctypes.util.find_library("hdf5")])]
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(str(candidate))
            lib.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
            return lib
        except (OSError, AttributeError):
            continue
    return None


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


def _as_str(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _scalar_str(ds: h5py.Dataset) -> str:
    return _as_str(ds[()]).rstrip("\x00")


def _json_attr(obj, key: str) -> list:
    value = json.loads(_as_str(obj.attrs[key]))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"attribute {key!r} is not a list of names")
    return value


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


def _is_tables_file(path: Path) -> bool:
    try:
        with _reader(path) as f:
            return _as_str(f.attrs.get("schema", "")) == TABLES_SCHEMA
    except (RunFileError, OSError):
        return False


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


# -- study tables ------------------------------------------------------------------------------
# A study's summary (tables of numbers and labels, no weights), so a finished study can be shown
# without its run files: the bundled defense study is one. Schema "ulviz.tables", one group per
# table, one dataset per column.

TABLES_SCHEMA = "ulviz.tables"


def write_tables(path: str | Path, kind: str, tables: dict[str, pd.DataFrame], note: str = "") -> Path:
    """Write `tables` (name -> DataFrame of numeric or text columns) as a `kind` summary file,
    atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(schema=TABLES_SCHEMA, kind=kind, note=note, ulviz_version=__version__,
                       created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        for name, df in tables.items():
            g = f.create_group(name)
            g.attrs["columns"] = json.dumps(list(df.columns))
            for col in df.columns:
                values = df[col].to_numpy()
                if values.dtype.kind in "fiub":
                    g.create_dataset(col, data=values.astype(float))
                else:
                    g.create_dataset(col, data=[str(v) for v in values], dtype=h5py.string_dtype())
    tmp.replace(path)
    return path


def read_tables(path: str | Path, kind: str) -> tuple[dict[str, pd.DataFrame], str]:
    """The tables of a `kind` summary file and its note; a clear error for anything else."""
    path = check_run_file(path)
    try:
        with _h5file(path, "r") as f:
            if _as_str(f.attrs.get("schema", "")) != TABLES_SCHEMA or _as_str(f.attrs.get("kind", "")) != kind:
                raise RunFileError(path, f"is not a ulviz {kind} summary file")
            tables = {}
            for name, g in f.items():
                cols = json.loads(_as_str(g.attrs["columns"]))
                tables[name] = pd.DataFrame({c: [_as_str(v) for v in g[c][()]] if g[c].dtype.kind in "OS"
                                             else g[c][()] for c in cols}, columns=cols)
            return tables, _as_str(f.attrs.get("note", ""))
    except UlvizError:
        raise
    except Exception as e:
        raise RunFileError(path, f"damaged summary file ({type(e).__name__}: {e})") from None


# -- the sharpness atlas ---------------------------------------------------------------------
#
#    /sharpness/<measure>   attrs: layers (JSON), settings (JSON of what the values depend on)
#                           epoch (rows,), values (rows, layers): one row per computed epoch
#
# Like SAL: a measure recomputed with other settings replaces its rows, rows made with the same
# settings are kept (an interrupted computation resumes), the epoch is written after its values.

def prepare_sharpness(path: str | Path, measure: str, layer_names: list[str], settings: dict) -> list[int]:
    """Make the run file's /sharpness/<measure> group hold `settings`; the epochs already computed with them."""
    with open_for_update(path) as f:
        root = f.require_group("sharpness")
        g = root.get(measure)
        if g is not None and not (json.loads(_as_str(g.attrs.get("layers", "[]"))) == list(layer_names)
                                  and json.loads(_as_str(g.attrs.get("settings", "{}"))) == settings):
            del root[measure]
            g = None
        if g is None:
            g = root.create_group(measure)
            g.attrs["layers"] = _fixed(json.dumps(list(layer_names)))
            g.attrs["settings"] = _fixed(json.dumps(settings))
            g.create_dataset("epoch", shape=(0,), maxshape=(None,), chunks=(256,), dtype="i8")
            g.create_dataset("values", shape=(0, len(layer_names)), maxshape=(None, len(layer_names)),
                             chunks=(64, max(len(layer_names), 1)), dtype="f8")
        return [int(e) for e in g["epoch"][:min(g["epoch"].shape[0], g["values"].shape[0])]]


def append_sharpness_row(path: str | Path, measure: str, epoch: int, values: np.ndarray) -> None:
    """Append one epoch's values (one per layer) of `measure`; the file is opened per row."""
    with open_for_update(path) as f:
        g = f["sharpness"][measure]
        rows = min(g["epoch"].shape[0], g["values"].shape[0])
        g["values"].resize(rows, axis=0)  # drop a row cut off by a kill
        _append_row(g["values"], np.asarray(values, dtype=np.float64))
        g["epoch"].resize(rows, axis=0)
        _append_row(g["epoch"], epoch)


def read_sharpness(path: str | Path) -> dict[str, dict]:
    """measure -> {"epochs", "values" (rows sorted by epoch, one column per layer), "layers",
    "settings"} for every measure stored in the run file; {} when none is."""
    path = check_run_file(path)
    out = {}
    with _reader(path) as f:
        for measure, g in (f["sharpness"].items() if "sharpness" in f else []):
            rows = min(g["epoch"].shape[0], g["values"].shape[0])
            epochs, values = np.array(g["epoch"][:rows], dtype=int), np.array(g["values"][:rows])
            order = np.argsort(epochs, kind="stable")
            out[measure] = {"epochs": epochs[order], "values": values[order],
                            "layers": json.loads(_as_str(g.attrs["layers"])),
                            "settings": json.loads(_as_str(g.attrs["settings"]))}
    return out
