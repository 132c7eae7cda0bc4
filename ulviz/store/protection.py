"""The protected training images a run file stores when they cannot be re-derived exactly:
class-wise patterns, or the changed samples' perturbations, rebuilt bit for bit on the clean images.
"""
from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
import torch

from ..core.provenance import tensor_digest
from .files import _as_str, _fixed


# -- stored protections --------------------------------------------------------------------
#
#    /protection            attrs: encoding, digest (ulviz.core.provenance.tensor_digest of the images),
#                           shape; the images are rebuilt on the clean training images x:
#      encoding "patterns": indices (k,), patterns (P, C, H, W) f4, pattern_of (k,):
#                           out = x; out[indices] = clip(x[indices] + patterns[pattern_of], 0, 1)
#      encoding "steps":    indices (k,) of the changed samples, steps (k, C, H, W) i1 (gzip): when the clean
#                           and the protected images are both 8-bit images (every value v/255), the
#                           change in whole 8-bit steps: out[indices] = (rint(255 x[indices]) + steps) / 255
#      encoding "delta":    indices (k,) of the changed samples, delta (k, C, H, W) f4 (gzip + shuffle),
#                           or, when it takes at most 65536 distinct values (signed-gradient steps
#                           leave a few hundred), palette (V,) f4 and codes (k, C, H, W) u1 / u2
#                           (gzip) with delta = palette[codes]; fix_at / fix_value: the flat
#                           positions (in delta) where x + delta rounds off the stored image, and
#                           that image's values there:
#                           out = x; out[indices] = x[indices] + delta; out[indices].flat[fix_at] = fix_value
#
# All three rebuild the float32 images bit for bit (checked when written, and against the digest when
# read). Class-wise patterns cost P images; a sample-wise perturbation costs its changed samples:
# a byte per value in 8-bit steps (what the trained sample-wise methods leave on 8-bit image sets,
# ulviz.protect.poisons), else a palette code or a float, gzip-compressed.

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
    steps = _eight_bit_steps(clean[changed], protected[changed])
    if steps is not None:
        g.attrs["encoding"] = _fixed("steps")
        g.create_dataset("indices", data=changed.astype(np.int64), **_gzip(len(changed)))
        chunks = (max(1, min(len(changed), 64)), *steps.shape[1:]) if len(changed) else None
        g.create_dataset("steps", data=steps, chunks=chunks, **(_GZIP if len(changed) else {}))
        return
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


def _levels(x: np.ndarray) -> np.ndarray:
    """x in whole 8-bit levels (float32): rint(255 x)."""
    return np.rint(x * np.float32(255))


def _from_levels(levels: np.ndarray) -> np.ndarray:
    # the division a uint8 image set is loaded with (ulviz.data.datasets: u8.float() / 255)
    return (levels / np.float32(255)).astype(np.float32)


def _eight_bit_steps(clean: np.ndarray, protected: np.ndarray) -> np.ndarray | None:
    """The change from `clean` to `protected` in whole 8-bit steps (int8), when both are 8-bit
    images that the steps give back bit for bit; else None."""
    if not len(clean):
        return None
    lc, lp = _levels(clean), _levels(protected)
    steps = lp - lc
    if np.abs(steps).max() > 127 or not np.array_equal(_from_levels(lc + steps.astype(np.int8)), protected):
        return None
    if not np.array_equal(_from_levels(lc), clean):
        return None
    return steps.astype(np.int8)


def _read_protection(g: h5py.Group, clean: np.ndarray) -> np.ndarray:
    if tuple(int(v) for v in g.attrs["shape"]) != clean.shape:
        raise ValueError(f"stored protection has shape {tuple(g.attrs['shape'])}, the clean images {clean.shape}")
    out = clean.copy()
    idx = np.array(g["indices"], dtype=np.int64)
    encoding = _as_str(g.attrs["encoding"])
    if encoding == "patterns":
        out[idx] = np.clip(clean[idx] + np.array(g["patterns"])[np.array(g["pattern_of"])], 0, 1)
    elif encoding == "steps":
        out[idx] = _from_levels(_levels(clean[idx]) + np.array(g["steps"]))
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
