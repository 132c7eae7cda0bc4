"""Opening the HDF5 files of the store: read-only (a plain open, else a SWMR read of a file a
writer holds), for an update (a dead writer's "open for write" flag cleared by rewriting the file),
waiting out another process's lock; and the small readers and writers of string attributes and
growing datasets every kind of file here shares.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..core.errors import RunFileError


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


def _fixed(text: str) -> np.bytes_:
    """A string attribute as fixed-length UTF-8 bytes. h5py writes a Python str as a variable-length
    string, whose bytes live in HDF5's global heap: unchecksummed, and a corrupted global heap can
    send the HDF5 library into an endless loop when the attribute is read (found by fuzzing).
    Fixed-length values sit in the checksummed object header instead."""
    return np.bytes_(text.encode("utf-8"))


def _append_row(ds: h5py.Dataset, value) -> None:
    n = ds.shape[0]
    ds.resize(n + 1, axis=0)
    ds[n] = value


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


def _as_str(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _scalar_str(ds: h5py.Dataset) -> str:
    return _as_str(ds[()]).rstrip("\x00")


def _json_attr(obj, key: str) -> list:
    value = json.loads(_as_str(obj.attrs[key]))
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"attribute {key!r} is not a list of names")
    return value
