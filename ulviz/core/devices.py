"""Pick the torch device: cuda, then mps, then cpu, unless the caller names one; on the CPU, settle
the allocator before a long run of same-sized tensors (:func:`compute_device`)."""
from __future__ import annotations

import torch

from .errors import UlvizError


def select_device(override: str | torch.device | None = None) -> torch.device:
    """The device to compute on: `override` if given ("cpu", "cuda:1", "auto"), else the best available."""
    if override is not None and str(override) != "auto":
        device = torch.device(override)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UlvizError(f"device {override!r} requested but CUDA is not available here")
        if device.type == "mps" and not _mps_available():
            raise UlvizError(f"device {override!r} requested but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def compute_device(override: str | torch.device | None = None) -> torch.device:
    """:func:`select_device`, for a computation about to start there: training, SAL, poisons and landscapes
    begin here, and on the CPU this settles the allocator first (:func:`settle_cpu_allocator`)."""
    device = select_device(override)
    if device.type == "cpu":
        settle_cpu_allocator()
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


_SETTLED = False


def settle_cpu_allocator() -> None:
    """Let glibc's malloc keep freed blocks of up to 32 MB instead of handing them back to the
    system, once per process.

    Why: torch allocates CPU tensors with malloc, which serves blocks above its mmap threshold
    (128 KB at start) with fresh pages and, after a free, returns heap tops above twice that
    threshold. The threshold only grows when a block served that way is freed, up to 32 MB. Until
    it has, a loop that makes and drops a few MB-sized tensors per step (a landscape point of a
    conv net) pays a page fault for every 4 KB of them, every step: 2-3x slower, measured as 5,700
    faults per point of a 41x41 plane of a small skip-connection net (14 against 4.6 ms a point;
    exact SAL of the cnn on 512 digits: 97,000-206,000 faults and 1.07-1.18 s against 14,000 and
    0.96 s), and whether a process is in that state depends on what it allocated before. Freeing one
    block of just under 32 MB raises the threshold to its ceiling, which is what a long-running
    process reaches by itself; nothing is fixed by hand and other allocators are unaffected."""
    global _SETTLED
    if not _SETTLED:
        torch.empty((32 << 20) - (1 << 16), dtype=torch.uint8)  # made and freed at once
        _SETTLED = True
