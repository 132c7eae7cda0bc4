"""What the worker processes of jobs and sweeps share: a run's file-safe name and the environment
a worker (``python -m ulviz.cli train ...``) runs in.

Here, below both the dashboard's jobs and the sweeps, so that the jobs may use the sweeps (a
sweep launched from the dashboard) without the sweeps importing the jobs back.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import UlvizError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str, max_len: int = 64) -> str:
    """A file-name-safe version of a user's run name: letters, digits, '.', '_', '-' only, no
    leading dot, at most `max_len` characters; refuses a name with nothing usable left."""
    clean = _SAFE.sub("-", name.strip()).strip(".-")[:max_len]
    if not clean:
        raise UlvizError(f"run name {name!r} has no usable characters (use letters, digits, '.', '_', '-')")
    return clean


def worker_env() -> dict[str, str]:
    """The environment of a worker process (a job, a sweep's run): ours, with the package this
    process runs from importable even where it is not installed."""
    package_root = str(Path(__file__).resolve().parents[2])  # the folder holding ulviz/ (this is ulviz/studies/processes.py)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
