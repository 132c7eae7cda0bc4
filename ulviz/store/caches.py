"""Cached loss landscapes: in a run file's /landscapes group, or in a cache file of their own
beside the data (``*.landscapes``), so browsing never writes a run file.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..core.errors import RunFileError
from .files import _as_str, _fixed, _h5file, _lock_busy, _reader, check_run_file, open_for_update
from .runs import Run


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
