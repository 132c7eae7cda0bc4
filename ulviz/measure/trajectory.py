"""Optimization paths: where a run's weights went, epoch by epoch.

The path of a run is projected on the two principal directions of its weight snapshots taken
relative to its final weights (Li et al., NeurIPS 2018, the trajectory plot): the rows
θ_e - θ_final are centred and decomposed, and every epoch is placed at its projections
⟨θ_e - θ_final, v_k⟩, so the final weights sit at the origin. Two runs from the same
initialization share one plane (the decomposition of both runs' rows, relative to the first
run's final weights). Per layer, the same is done within one weight tensor, and a poisoned run is
compared with its clean twin layer by layer: how far apart the weights are and whether their
updates point the same way.

By default only weights of dimension > 1 take part (biases and batch-norm parameters are left out,
as in the landscape directions); `names` chooses others.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..core.errors import UlvizError


@dataclass
class PathPlane:
    """Weight paths projected on a plane of two principal directions."""

    coords: list[np.ndarray]  # per run: (epochs+1, 2) coordinates, row e = epoch e
    explained: np.ndarray  # (2,) fraction of the paths' variance along each direction
    directions: list[dict[str, torch.Tensor]]  # the two unit directions, per tensor (zeros for others)
    origin: dict[str, torch.Tensor]  # the weights at the plane's (0, 0): the first run's final weights
    names: list[str]  # the tensors that took part


def default_names(run) -> list[str]:
    """The trainable tensors of dimension > 1 (weights; not biases or batch-norm parameters)."""
    shapes = run.tensor_shapes()
    return [n for n in run.param_names if len(shapes[n]) > 1]


def path_matrix(run, names: list[str]) -> np.ndarray:
    """(epochs+1, parameters) float64: every snapshot of the tensors `names`, flattened."""
    return np.concatenate([run.weights_path(n).reshape(len(run.metrics), -1).astype(np.float64) for n in names], axis=1)


def principal_directions(rows: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The first `k` principal directions of `rows` (centred) and their explained variance ratios.

    Computed from the small Gram matrix (rows x rows), since there are far fewer epochs than
    parameters; signs are fixed so that each direction's largest entry is positive."""
    x = rows - rows.mean(0, keepdims=True)
    gram = x @ x.T
    vals, vecs = np.linalg.eigh(gram)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.clip(vals[order], 0, None), vecs[:, order]
    total = vals.sum()
    if total <= 0:
        raise UlvizError("the weights never moved: a path needs at least two different snapshots")
    comps = []
    for i in range(k):
        if vals[i] <= total * 1e-12:  # fewer independent moves than directions asked for
            comps.append(np.zeros(rows.shape[1]))
            continue
        v = x.T @ vecs[:, i] / np.sqrt(vals[i])
        comps.append(v * np.sign(v[np.argmax(np.abs(v))]))
    return np.stack(comps), vals[:k] / total


def pca_plane(runs, names: list[str] | None = None) -> PathPlane:
    """The path of one run (or of several from the same initialization) on one PCA plane,
    centred on the first run's final weights."""
    runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
    names = names or default_names(runs[0])
    _check_same_tensors(runs, names)
    mats = [path_matrix(r, names) for r in runs]
    origin_vec = mats[0][-1]
    rel = [m - origin_vec for m in mats]
    comps, explained = principal_directions(np.concatenate(rel))
    coords = [m @ comps.T for m in rel]
    # the origin is the whole final state of the first run: the tensors left out of the PCA
    # (biases, batch-norm scales) keep their trained values, they are not zero
    final = runs[0].snapshot(-1)
    origin = {n: final[n].float() for n in runs[0].param_names}
    return PathPlane(coords, explained, [_unflatten(c, runs[0], names) for c in comps], origin, names)


def layer_path(run, layer: str, other=None) -> PathPlane:
    """The path of one tensor's values (PCA within that tensor), of one run or of two together."""
    if layer not in run.tensor_names:
        raise UlvizError(f"{run.path} has no tensor {layer!r}")
    return pca_plane([run] if other is None else [run, other], [layer])


def divergence(clean, poisoned, layers: list[str] | None = None) -> pd.DataFrame:
    """Per weight layer and epoch, how a poisoned run's path departs from its clean twin's.

    Columns: epoch, layer, rel_distance = ‖θp - θc‖ / ‖θc‖ at that epoch, and update_cosine =
    cosine of the two runs' updates θ_e - θ_{e-1} (1: same direction, 0: unrelated). Both runs
    need the same architecture; if their initial weights differ the distances start above zero."""
    layers = layers or clean.layer_names
    _check_same_tensors([clean, poisoned], layers)
    epochs = min(len(clean.metrics), len(poisoned.metrics))
    rows = []
    for name in layers:
        c = clean.weights_path(name)[:epochs].reshape(epochs, -1).astype(np.float64)
        p = poisoned.weights_path(name)[:epochs].reshape(epochs, -1).astype(np.float64)
        dist = np.linalg.norm(p - c, axis=1) / np.maximum(np.linalg.norm(c, axis=1), 1e-12)
        dc, dp = np.diff(c, axis=0), np.diff(p, axis=0)
        denom = np.linalg.norm(dc, axis=1) * np.linalg.norm(dp, axis=1)
        cos = np.where(denom > 0, (dc * dp).sum(1) / np.where(denom > 0, denom, 1), np.nan)
        for e in range(epochs):
            rows.append({"epoch": e, "layer": name, "rel_distance": dist[e],
                         "update_cosine": cos[e - 1] if e > 0 else np.nan})
    return pd.DataFrame(rows)


def divergence_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: final relative distance and mean update cosine, most divergent first."""
    last = table["epoch"].max()
    out = table.groupby("layer", sort=False).agg(mean_update_cosine=("update_cosine", "mean"))
    out.insert(0, "final_rel_distance", table[table["epoch"] == last].set_index("layer")["rel_distance"])
    return out.sort_values("final_rel_distance", ascending=False).reset_index()


def _check_same_tensors(runs, names) -> None:
    first = runs[0].tensor_shapes()
    missing = [n for n in names if n not in first]
    if missing:
        raise UlvizError(f"{runs[0].path} has no tensor {missing[0]!r}")
    for r in runs[1:]:
        shapes = r.tensor_shapes()
        if any(shapes.get(n) != first[n] for n in names):
            raise UlvizError(f"{r.path} and {runs[0].path} have different architectures: paths need the same tensors")


def _unflatten(vec: np.ndarray, run, names: list[str]) -> dict[str, torch.Tensor]:
    """A flat vector over `names` back into tensors; every other parameter is zero."""
    shapes = run.tensor_shapes()
    out, i = {}, 0
    for n in run.param_names:
        shape = tuple(shapes[n])
        if n in names:
            size = int(np.prod(shape))
            out[n] = torch.from_numpy(vec[i:i + size].reshape(shape).copy()).float()
            i += size
        else:
            out[n] = torch.zeros(shape)
    return out
