"""Landscapes of run files: the run's model and data, a landscape read from its cache or computed
and cached as it goes (in the run file or a cache file of its own), and what one costs.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ...core.errors import UlvizError, UnknownNameError
from ...core.provenance import tensor_digest
from .surfaces import Landscape, _axis, _span, _surface, interpolation, line, plane


# -- landscapes of run files, cached in them ------------------------------------------------

KINDS = ("line", "plane", "interp", "pca")
SPLITS = ("train", "clean", "test")  # the data the run trained on (maybe protected), clean train, clean test


def run_model(run, epoch: int = -1) -> nn.Module:
    """A model of the run's architecture holding its weights at `epoch` (-1: the last finished)."""
    from ...models.registry import create_model
    from ...data.tasks import get_task
    ds = _run_dataset(run)
    outputs = get_task(run.config.train.task).outputs(ds)
    with torch.random.fork_rng(devices=[]):
        model = create_model(run.config.model.name, ds.image_shape, outputs, run.config.model.width)
    model.load_state_dict(run.snapshot(epoch))
    return model.eval()


def run_data(run, split: str = "test", subset: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples a landscape of `run` is measured on (the first `subset` of them)."""
    if split not in SPLITS:
        raise UnknownNameError("split", split, list(SPLITS))
    from ...protect.trainset import run_training_data
    # the run's inputs and targets: the images it trained on, digest-checked (ulviz.protect.trainset)
    data = run_training_data(run, _run_dataset(run), protected=split == "train")
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_train, data.y_train)
    if subset is not None:
        if subset < 1:
            raise UlvizError("subset must be at least 1")
        x, y = x[:subset], y[:subset]
    return x, y


def _run_dataset(run):
    return _dataset(run.config.data)


@functools.lru_cache(maxsize=4)
def _dataset(config):
    """The dataset of a DataConfig, read once per process: a dashboard rerun must not reread
    CIFAR's files (never modified in place: protected or subset copies are new tensors)."""
    from ...data.datasets import load_dataset
    return load_dataset(config)


def _other_settings(path, other) -> dict:
    """What a landscape toward another run (a Run) is keyed on: that file's name and a digest of its
    final weights, so a run file rewritten under the same name (a remade demo run) is never served
    the landscape of the weights it replaced (its creation stamp has whole seconds only)."""
    final = other.snapshot(-1)
    digest = hashlib.sha256("".join(f"{k}={tensor_digest(final[k])};" for k in sorted(final)).encode())
    return dict(other=Path(path).name, other_run=other.name, other_epochs=len(other.metrics),
                other_final=digest.hexdigest()[:16])


def run_landscape(path, kind: str = "plane", *, epoch: int = -1, resolution: int = 41,
                  span: float | tuple[float, float] | None = None, normalization: str = "filter", seed: int = 0,
                  keep_biasbn: bool = False, layer: str | None = None, split: str = "test",
                  subset: int | None = None, other=None, coarse: int | None = None, device=None,
                  cache: bool = True, compute: bool = True, cache_file: str | Path | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Landscape | None:
    """A landscape of the run file at `path`, read from its cache or computed and cached there.

    kind: "line" / "plane" (random directions around the weights at `epoch`), "interp" (the line
    from the initial weights to those at `epoch`, or to the final weights of the run file `other`
    of the same architecture; α = 0 and 1 are the two ends) or "pca" (the plane of the run's
    weight path, or of its path and `other`'s together, see :mod:`ulviz.measure.trajectory`, centred on its
    final weights; `span` is then the
    margin around the path, as a fraction of its extent). `span` defaults to (-1, 1), (-0.5, 1.5)
    for "interp" and a margin of 0.25 for "pca". Points already cached are not recomputed;
    `compute=False` returns only what is cached (None if nothing is). With `cache_file` (see
    :func:`ulviz.store.caches.landscape_cache_path`) the run file is only read: what it lacks is read
    from and written to that file instead.
    """
    from ...store.runs import open_run
    from ...store.caches import read_landscape, write_landscape_points
    if kind not in KINDS:
        raise UnknownNameError("landscape kind", kind, list(KINDS))
    run = open_run(path)
    last = len(run.metrics) - 1
    ep = epoch if epoch >= 0 else last + 1 + epoch
    if not 0 <= ep <= last:
        raise UlvizError(f"{run.path} has epochs 0..{last}; epoch {epoch} is not stored")
    # version 2 of "pca": its origin keeps the biases and batch-norm parameters (version 1 zeroed them)
    settings = dict(kind=kind, epoch=ep, resolution=resolution, split=split, subset=subset,
                    version=2 if kind == "pca" else 1)
    model = run_model(run, ep)
    if span is None:
        span = {"interp": (-0.5, 1.5), "pca": 0.25}.get(kind, 1.0)
    if kind in ("line", "plane"):
        settings.update(span=list(_span(span)), normalization=normalization, seed=seed, keep_biasbn=keep_biasbn,
                        layer=layer)
    elif kind == "interp":
        settings.update(span=list(_span(span)))
        if other is not None:
            other_run = open_run(other)
            settings.update(_other_settings(other, other_run))
            start, end = model.state_dict(), other_run.snapshot(-1)
        else:
            start, end = run.snapshot(0), model.state_dict()
    else:
        from ..trajectory import pca_plane
        plane_runs = [run]
        if other is not None:  # one plane for both paths (same architecture and initialization)
            plane_runs.append(open_run(other))
            settings.update(_other_settings(other, plane_runs[1]))
        path_plane = pca_plane(plane_runs)
        if not isinstance(span, (int, float)) or span < 0:
            raise UlvizError("for a PCA plane the range is one margin >= 0, a fraction of the path's extent")
        settings.update(margin=float(span), epochs=last + 1)
        model = run_model(run, -1)
    if kind == "pca":
        every = np.concatenate(path_plane.coords)
        axes = [_axis(resolution, _padded(c, settings["margin"])) for c in every.T]
    else:
        axes = [_axis(resolution, settings["span"])] * (2 if kind == "plane" else 1)
    cached = read_landscape(run.path, settings) if cache else None
    target = run.path
    if cache and cache_file is not None:
        target = Path(cache_file)
        if cached is None or not cached["done"].all():
            cached = _read_cache_file(target, settings) or cached
    if not compute:
        return None if cached is None else _from_cache(cached, settings)
    x, y = run_data(run, split, subset)
    writer = _ThrottledWriter(target, settings, axes, write_landscape_points, progress) if cache else None
    known = None if cached is None else (cached["loss"], cached["acc"], cached["done"])
    if writer and cached is not None:
        writer.done = int(cached["done"].sum())
    common = dict(device=device, known=known, on_points=writer)
    try:
        if kind == "plane":
            land = plane(model, (x, y), resolution=resolution, span=span, normalization=normalization, seed=seed,
                         keep_biasbn=keep_biasbn, layer=layer, coarse=coarse, **common)
        elif kind == "line":
            land = line(model, (x, y), resolution=resolution, span=span, normalization=normalization, seed=seed,
                        keep_biasbn=keep_biasbn, layer=layer, **common)
        elif kind == "interp":
            land = interpolation(model, (x, y), start, end, resolution=resolution, span=settings["span"], **common)
        else:
            land = _surface(model, (x, y), path_plane.directions, axes, path_plane.origin, None, device, None, coarse,
                            known, writer, {"kind": "pca"})
            land.settings["explained"] = path_plane.explained.tolist()
    finally:
        if writer:
            writer.flush()
    land.settings = {**settings, **{k: v for k, v in land.settings.items() if k == "explained"}}
    return land


def cached_landscapes(path, cache_file: str | Path | None = None) -> list[dict]:
    """Settings of the landscapes cached for the run file at `path` (in it, then in `cache_file`),
    each with "complete", the fraction of its points computed."""
    from ...store.caches import list_landscapes
    found = list_landscapes(path)
    if cache_file is not None and Path(cache_file).exists():
        try:
            found += list_landscapes(cache_file)
        except UlvizError:
            pass  # a damaged cache holds nothing; it is replaced on the next write
    return found


def landscape_cost(run, kind: str, resolution: int, split: str = "test", subset: int | None = None) -> tuple[int, int]:
    """(grid points, samples per point) of a landscape: its cost is their product in forward
    passes of one image (an interpolation or line has `resolution` points, a plane its square)."""
    ds = _run_dataset(run)
    n = len(ds.y_test) if split == "test" else len(ds.y_train)
    return resolution ** (2 if kind in ("plane", "pca") else 1), min(n, subset or n)


def _read_cache_file(path: Path, settings: dict) -> dict | None:
    """A landscape cache file's points for `settings`; a missing or damaged file holds none."""
    from ...store.caches import read_landscape
    if not path.exists():
        return None
    try:
        return read_landscape(path, settings)
    except UlvizError:
        path.unlink(missing_ok=True)  # only recomputable points are lost
        return None


def _padded(values: np.ndarray, margin: float) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    pad = max(hi - lo, 1e-3) * margin
    return lo - pad, hi + pad


def _from_cache(cached: dict, settings: dict) -> Landscape:
    shape = tuple(len(a) for a in cached["coords"])
    return Landscape(cached["coords"], cached["loss"].reshape(shape), cached["acc"].reshape(shape), [],
                     {**settings, "complete": float(cached["done"].mean())})


class _ThrottledWriter:
    """Collects computed points and writes them to the run file every `every` seconds (and at
    the end), so a fast grid does not reopen the file after every chunk."""

    def __init__(self, path, settings, axes, write, progress, every: float = 2.0):
        import time
        self.path, self.settings, self.axes, self.write = path, settings, axes, write
        self.progress, self.every = progress, every
        self.pending: list = []
        self.total = int(np.prod([len(a) for a in axes]))
        self.done = 0
        self.clock = time.monotonic
        self.last = self.clock()

    def __call__(self, idx, loss, acc) -> None:
        self.pending.append((np.asarray(idx), np.asarray(loss), np.asarray(acc)))
        self.done += len(idx)
        if self.progress:
            self.progress(self.done, self.total)
        if self.clock() - self.last >= self.every:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        idx, loss, acc = (np.concatenate(p) for p in zip(*self.pending))
        self.write(self.path, self.settings, self.axes, idx, loss, acc)
        self.pending = []
        self.last = self.clock()
