"""What a run was made with: the environment (versions, code revision, device, threads,
determinism settings) and content digests of the data it trained on.

Part of the core layer: it imports torch and numpy only. The run file stores the dict of
:func:`environment` and the digests (``ulviz.store.runs``); ``ulviz info`` shows them and
``ulviz verify`` compares them with the present ones.

Digests are sha256 over a canonical form of a tensor: its dtype and shape as a short header,
then its values as contiguous little-endian bytes (float32 for images, int64 for labels), so the
same values give the same digest whatever device, layout or stride they came from.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__version__ = "0.1.0"  # ulviz's own version (re-exported as ulviz.__version__; pyproject.toml says the same)

# the thread count an optimized protection (em, rem, tap) is generated with: on the CPU the
# weight gradients of conv and linear layers (reductions over the batch) are split across threads,
# so their rounding, and after a few rounds the whole perturbation, depends on the thread count
GENERATION_THREADS = 1

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ulviz/ itself (this file is ulviz/core/provenance.py)
_PACKAGE_ROOT = PACKAGE_DIR.parent  # the checkout (or site-packages) holding ulviz


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 (hex) of `t`'s values in a canonical form: floats as float32, integers as int64,
    little-endian, C order, preceded by "dtype:shape"."""
    t = t.detach().cpu()
    t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
    a = np.ascontiguousarray(t.numpy()).astype(t.numpy().dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(f"{a.dtype.str}:{tuple(a.shape)}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def data_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """One digest of images `x` and their labels (or targets) `y`."""
    return hashlib.sha256(f"{tensor_digest(x)}|{tensor_digest(y)}".encode()).hexdigest()


def code_revision() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout ulviz is imported from, or (None, None) when it is not
    one (an installed package) or git is missing (then $ULVIZ_REVISION, when set, names the commit). A checkout that merely *contains* an installed
    ulviz (a venv inside another project's repository) is not taken for ulviz's own."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(_PACKAGE_ROOT), *args], capture_output=True, text=True,
                                 timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != _PACKAGE_ROOT:
        # a copy of the tree without .git (the GPU machine) may be named by whoever copied it
        return os.environ.get("ULVIZ_REVISION") or None, None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def device_name(device: torch.device | str) -> str:
    """A readable name of the device computed on: the GPU's model, or the CPU's architecture and
    the vector instructions torch uses on it (they change float rounding too)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
        return f"cpu {platform.machine()} ({capability})"
    return device.type


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model: its name, family and model numbers, and whether it has AMX tiles.

    Why beyond `device`: two CPUs that torch both runs at "AVX512" still round differently (oneDNN
    picks its kernels and blockings by the model), and SAL's ascent at lr 0.1 amplifies that: the
    bundled em run's first layers, recomputed on another CPU, moved by 4e-4 relative. Linux reads
    /proc/cpuinfo; elsewhere platform.processor() is what there is."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    amx = " AMX" if "amx_tile" in fields.get("flags", "").split() else ""
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}{amx})")


def determinism() -> dict:
    """The settings that decide whether torch may pick nondeterministic kernels."""
    cudnn = torch.backends.cudnn
    return {"deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(cudnn.deterministic), "cudnn_benchmark": bool(cudnn.benchmark)}


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 (16 hex) of ulviz's own Python source, every module of the package: what a run was
    made by, exact also in a dirty checkout or an installed copy (where a git revision says
    nothing). Reuse of an earlier run (ulviz.training.verify.reusable_run) keys on it."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def environment(device: torch.device | str = "cpu") -> dict:
    """The environment a run is made in, as a flat JSON-able dict (see the module docstring)."""
    commit, dirty = code_revision()
    return {
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "ulviz": __version__, "code_revision": commit, "code_dirty": dirty, "code_digest": code_digest(),
        "platform": f"{sys.platform} {platform.machine()}", "device": device_name(device), "cpu": cpu_name(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        **determinism(),
    }


# fields of `environment` that change results when they differ (the rest is for the record)
RESULT_FIELDS = ("torch", "numpy", "code_revision", "code_dirty", "code_digest", "device", "cpu", "torch_threads",
                 "deterministic_algorithms", "cudnn_deterministic", "cudnn_benchmark")


# the provenance columns of a runs table, in order (see provenance_columns)
PROVENANCE_COLUMNS = ("code", "code_digest", "torch", "device", "threads", "trained_on", "protection")


def provenance_columns(provenance: dict) -> dict:
    """A run file's stored provenance as short table cells (the columns of PROVENANCE_COLUMNS):
    the code revision (12 hex, "+dirty" when the tree had changes), the code digest, torch, the
    device, the thread count, the first 12 hex of the digest of the images as trained, and whether
    the protection is stored in the file. Cells are None where the file recorded nothing (a file
    written before ulviz recorded provenance)."""
    env, digests = provenance.get("environment") or {}, provenance.get("digests") or {}
    commit = env.get("code_revision")
    code = None if commit is None else commit[:12] + ("+dirty" if env.get("code_dirty") else "")
    stored = digests.get("protection_stored")
    return {"code": code, "code_digest": env.get("code_digest"), "torch": env.get("torch"),
            "device": env.get("device"), "threads": env.get("torch_threads"),
            "trained_on": (digests.get("protected_train") or "")[:12] or None,
            "protection": None if stored is None else ("stored" if stored else "re-derived")}


@contextmanager
def fixed_threads(n: int = GENERATION_THREADS) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to `n`, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
