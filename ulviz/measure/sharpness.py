"""A per-layer sharpness atlas: curvature, adaptive sharpness and norms of every Conv/Linear weight.

For one weight tensor W of a model in eval mode (every other tensor frozen), with
L(W) = the mean cross-entropy over the chosen samples (all batches weighted by their size):

- ``eig``: the dominant eigenvalue of the Hessian block d^2 L / dW^2 (the one of largest
  magnitude, with its sign), by power iteration on Hessian-vector products (double backward),
  stopping when the Rayleigh quotient changes by less than `tol` relative, as PyHessian does for
  the whole model;
- ``trace``: the trace of that Hessian block by Hutchinson's estimator, the mean of z^T H z over
  `probes` Rademacher vectors z;
- ``adaptive``: ASAM's adaptive sharpness (Kwon et al. 2021; Andriushchenko et al. 2023),
  the worst-case loss increase in the ball scaled elementwise by |W|::

      S(W) = max { L(W + d) - L(W) : || d / (|W| + eta) ||_2 <= rho }

  found by `ascent_steps` projected normalized-gradient ascent steps in the scaled coordinates
  u = d / (|W| + eta): u <- P(u + rho * T g / ||T g||) with T = |W| + eta and g = dL/dW at W + T u,
  P the projection onto ||u|| <= rho. The first step is ASAM's own perturbation. The value is the
  highest increase at the visited points (the start included), so it never exceeds the true
  maximum and is 0 only where no step raised the loss;
- ``norm``: ||W||_F;
- ``dist_init``: ||W - W_init||_F, W_init the run's initial weights (snapshot 0).

The caller's model is never modified: every evaluation goes through
``torch.func.functional_call`` on a private copy.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ..core.config import _limits, check_numbers
from ..core.devices import compute_device
from ..core.errors import UlvizError, UnknownNameError
from ..models.registry import build_model, weight_layer_names

MEASURES = ("eig", "trace", "adaptive", "norm", "dist_init")
LABELS = {  # how pages and tables name each measure
    "eig": "top Hessian eigenvalue", "trace": "Hessian trace", "adaptive": "adaptive sharpness",
    "norm": "weight norm", "dist_init": "distance from init",
}
DATA_MEASURES = ("eig", "trace", "adaptive")  # the measures that read the data (the others are weights only)


@dataclass(frozen=True)
class SharpnessConfig:
    measures: tuple = MEASURES  # which of MEASURES to compute
    subset: int | None = _limits(256, ge=1)  # first N samples of the data (None = all of it)
    batch_size: int = _limits(128, ge=1)  # samples per forward/backward pass
    power_iters: int = _limits(20, ge=1)  # most power-iteration steps for `eig`
    tol: float = _limits(1e-3, ge=0)  # relative change of the eigenvalue estimate that stops the iteration
    probes: int = _limits(8, ge=1)  # Rademacher probes of Hutchinson's trace estimate
    rho: float = _limits(0.05, gt=0)  # radius of the |W|-scaled ball of adaptive sharpness
    eta: float = _limits(0.0, ge=0)  # added to |W| in the scaling (ASAM's eta; 0 = pure |W|)
    ascent_steps: int = _limits(3, ge=1)  # projected ascent steps of adaptive sharpness
    split: str = "train"  # "train" (the data the run trained on, maybe protected) or "test" (clean test set)
    seed: int = _limits(0, ge=0)  # seeds the random start vectors and probes (per layer, by its name)


def check_config(config: SharpnessConfig) -> None:
    """Refuse an unknown measure or split, or a number out of range: one line, nothing computed."""
    unknown = [m for m in config.measures if m not in MEASURES]
    if unknown:
        raise UnknownNameError("sharpness measure", unknown[0], list(MEASURES))
    if not config.measures:
        raise UlvizError("choose at least one sharpness measure")
    if config.split not in ("train", "test"):
        raise UlvizError(f"sharpness split must be 'train' or 'test', got {config.split!r}")
    check_numbers(config)


def layer_sharpness(model: nn.Module, data, config: SharpnessConfig = SharpnessConfig(), *,
                    init: dict[str, torch.Tensor] | None = None, layers: Iterable[str] | None = None,
                    device=None) -> dict[str, dict[str, float]]:
    """measure -> {layer -> value} for each Conv/Linear weight of `model` (or only `layers`) on
    `data` (an (X, Y) pair of tensors), the measures of `config`. `init` (a state dict, the run's
    snapshot 0) is needed for ``dist_init``."""
    check_config(config)
    if "dist_init" in config.measures and init is None:
        raise UlvizError("distance from initialisation needs the initial weights (init=)")
    device = compute_device(device)
    net = copy.deepcopy(model).to(device).eval()  # our copy: the caller's model is never touched
    names = list(layers) if layers is not None else weight_layer_names(net)
    params = dict(net.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        raise UlvizError(f"not a parameter of the model: {', '.join(unknown)}")
    out: dict[str, dict[str, float]] = {m: {} for m in config.measures}
    batches = _batches(data, config, device, next(net.parameters()).dtype) \
        if any(m in DATA_MEASURES for m in config.measures) else []
    for name in names:
        w = params[name].detach()
        if "norm" in config.measures:
            out["norm"][name] = float(torch.linalg.norm(w.double()))
        if "dist_init" in config.measures:
            out["dist_init"][name] = float(torch.linalg.norm(w.double() - init[name].to(device).double()))
        if batches:
            values = _data_measures(_LayerLoss(net, name, batches), config, _generator(config.seed, name, device))
            for m, v in values.items():
                out[m][name] = v
    return out


def _batches(data, config: SharpnessConfig, device, dtype) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(x, y, weight) per batch of the first `subset` samples; the weights (batch size / n) make
    the sum of batch losses the mean loss over all of them."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise UlvizError("data must be an (X, Y) pair of tensors")
    x, y = data
    if config.subset is not None:
        x, y = x[:config.subset], y[:config.subset]
    if len(x) == 0 or len(x) != len(y):
        raise UlvizError(f"sharpness needs samples with one label each, got {len(x)} inputs and {len(y)} labels")
    n, bs = len(x), config.batch_size
    return [(x[i:i + bs].to(device, dtype), y[i:i + bs].to(device).long(), min(bs, n - i) / n)
            for i in range(0, n, bs)]


def _generator(seed: int, name: str, device) -> torch.Generator:
    # a layer's random vectors depend on the seed and its name only, not on which layers are chosen
    return torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


class _LayerLoss:
    """L(W) of one weight tensor W of `net` on the batches, with everything else frozen."""

    def __init__(self, net: nn.Module, name: str, batches):
        self.net, self.name, self.batches = net, name, batches
        self.frozen = {k: v.detach() for k, v in net.named_parameters()}
        self.frozen.update(dict(net.named_buffers()))
        self.w0 = self.frozen[name]
        self._graphs = None

    def batch_loss(self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.net, {**self.frozen, self.name: w}, (x,)), y)

    @torch.no_grad()
    def loss(self, w: torch.Tensor) -> float:
        return sum(self.batch_loss(w, x, y).item() * k for x, y, k in self.batches)

    def gradient(self, w: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(w)
        for x, y, k in self.batches:
            leaf = w.detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(self.batch_loss(leaf, x, y), leaf)
            total += g * k
        return total

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """H v at W0 by double backward. The first backward's graph of each batch is built once
        and kept for every product (power iteration and probes reuse it): `subset` bounds its memory."""
        if self._graphs is None:
            self._graphs = []
            for x, y, k in self.batches:
                leaf = self.w0.clone().requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(self.batch_loss(leaf, x, y), leaf, create_graph=True)
                self._graphs.append((leaf, g, k))
        total = torch.zeros_like(self.w0)
        for leaf, g, k in self._graphs:
            (hv,) = torch.autograd.grad(g, leaf, grad_outputs=v, retain_graph=True)
            total += hv * k
        return total


def _data_measures(f: _LayerLoss, config: SharpnessConfig, gen: torch.Generator) -> dict[str, float]:
    out = {}
    if "eig" in config.measures:
        out["eig"] = top_eigenvalue(f.hvp, f.w0, config.power_iters, config.tol, gen)
    if "trace" in config.measures:
        out["trace"] = hutchinson_trace(f.hvp, f.w0, config.probes, gen)
    f._graphs = None  # free the kept graphs before the ascent builds its own
    if "adaptive" in config.measures:
        out["adaptive"] = adaptive_sharpness(f.loss, f.gradient, f.w0, config.rho, config.ascent_steps, config.eta)
    return out


def top_eigenvalue(hvp: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, iters: int, tol: float,
                   gen: torch.Generator) -> float:
    """The dominant eigenvalue (largest |lambda|, with its sign) of the symmetric operator `hvp`
    on tensors shaped like `like`: power iteration from a random unit vector, the Rayleigh
    quotient v.Hv as the estimate, stopped when it changes by less than `tol` relative."""
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    v = v / torch.linalg.norm(v)
    estimate = None
    for _ in range(iters):
        hv = hvp(v)
        new = float((v * hv).sum())
        norm = torch.linalg.norm(hv)
        if norm == 0:
            return 0.0  # H v = 0: the loss is flat along v (and v spans what the start reached)
        if estimate is not None and abs(new - estimate) <= tol * abs(estimate):
            return new
        estimate, v = new, hv / norm
    return estimate


def hutchinson_trace(hvp: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, probes: int,
                     gen: torch.Generator) -> float:
    """tr(H) estimated as the mean of z.Hz over `probes` Rademacher vectors z (entries +-1)."""
    total = 0.0
    for _ in range(probes):
        z = (torch.randint(0, 2, like.shape, generator=gen) * 2 - 1).to(like.device, like.dtype)
        total += float((z * hvp(z)).sum())
    return total / probes


def adaptive_sharpness(loss: Callable[[torch.Tensor], float], gradient: Callable[[torch.Tensor], torch.Tensor],
                       w0: torch.Tensor, rho: float, steps: int, eta: float = 0.0) -> float:
    """max L(w0 + d) - L(w0) over ||d / (|w0| + eta)|| <= rho, by `steps` projected
    normalized-gradient ascent steps of length rho in the scaled coordinates (see the module
    docstring); the highest increase at the visited points, 0 if none raised the loss."""
    scale = w0.abs() + eta
    base = loss(w0)
    u = torch.zeros_like(w0)
    best = 0.0
    for _ in range(steps):
        tg = scale * gradient(w0 + scale * u)  # the gradient in u's coordinates
        norm = torch.linalg.norm(tg)
        if norm == 0:
            break
        u = u + rho * tg / norm
        length = torch.linalg.norm(u)
        if length > rho:
            u = u * (rho / length)
        best = max(best, loss(w0 + scale * u) - base)
    return best


# -- runs -------------------------------------------------------------------------------------

def run_data(run, protected: bool):
    """The run's task data: its training inputs protected (what it trained on) or clean, and its
    clean test set. The one place sharpness and surgery build a run's data (SAL's rule)."""
    from ..data.datasets import load_dataset
    from ..protect.trainset import run_training_data
    return run_training_data(run, load_dataset(run.config.data), protected=protected)


def split_data(dataset, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, Y) of `split`: "train" = what the run trained on, "test" = the clean test set."""
    return (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_test, dataset.y_test)


def settings_of(config: SharpnessConfig, measure: str) -> dict:
    """The settings a stored measure depends on (its resume key): a change of the power
    iteration's length does not invalidate a stored trace, nor the data a weight norm."""
    keep = {"eig": ("subset", "batch_size", "power_iters", "tol", "split", "seed"),
            "trace": ("subset", "batch_size", "probes", "split", "seed"),
            "adaptive": ("subset", "batch_size", "rho", "eta", "ascent_steps", "split"),
            "norm": (), "dist_init": ()}[measure]
    return {"measure": measure, **{k: v for k, v in asdict(config).items() if k in keep}}


def compute_run_sharpness(path, config: SharpnessConfig = SharpnessConfig(), *, epochs: Iterable[int] | None = None,
                          device=None, progress: Callable[[int, int], None] | None = None) -> dict:
    """Compute the sharpness measures of `config` for the epochs of a run file (default: the
    epochs that have SAL, else the last) from its snapshots, storing each epoch's row as it is
    done; epochs already stored with the same settings are skipped. Returns
    :func:`ulviz.store.analyses.read_sharpness` of the file."""
    from ..store.analyses import append_sharpness_row, prepare_sharpness, read_sharpness
    from ..store.runs import open_run

    check_config(config)
    run = open_run(path)
    if run.epochs_done < 1:
        raise UlvizError(f"{path}: no trained epoch yet")
    wanted = sorted(set(epochs)) if epochs is not None else default_epochs(run)
    bad = [e for e in wanted if not 1 <= e <= run.epochs_done]
    if bad:
        raise UlvizError(f"{path}: no trained epoch {bad[0]} (it has epochs 1..{run.epochs_done})")
    todo = {m: [e for e in wanted if e not in set(prepare_sharpness(path, m, run.layer_names, settings_of(config, m)))]
            for m in config.measures}
    epochs_todo = sorted({e for es in todo.values() for e in es})
    if not epochs_todo:
        return read_sharpness(path)
    needs_data = any(todo.get(m) for m in DATA_MEASURES)
    # the protection is generated (or read from its cache) only when a measure reads the data
    dataset = run_data(run, protected=needs_data and config.split == "train")
    data = split_data(dataset, config.split) if needs_data else None
    model = build_model(run.config, dataset)
    init = run.snapshot(0)
    for i, epoch in enumerate(epochs_todo):
        model.load_state_dict(run.snapshot(epoch))
        measures = tuple(m for m in config.measures if epoch in todo[m])
        values = layer_sharpness(model, data, _with(config, measures), init=init, device=device)
        for m in measures:
            append_sharpness_row(path, m, epoch, np.array([values[m][n] for n in run.layer_names]))
        if progress:
            progress(i + 1, len(epochs_todo))
    return read_sharpness(path)


def weight_measures(run) -> dict[str, dict]:
    """The data-free measures (weight norm, distance from the initial weights) of every layer at
    every trained epoch, straight from the snapshots, in :func:`ulviz.store.analyses.read_sharpness`'s
    format: what the atlas shows before anything is computed (no data, no Hessian: instant)."""
    init = run.snapshot(0)
    epochs = np.arange(1, run.epochs_done + 1)
    norm, dist = [], []
    for epoch in epochs:
        w = run.snapshot(int(epoch))
        norm.append([float(w[n].double().norm()) for n in run.layer_names])
        dist.append([float((w[n].double() - init[n].double()).norm()) for n in run.layer_names])
    return {m: {"epochs": epochs, "values": np.array(v).reshape(len(epochs), len(run.layer_names)),
                "layers": list(run.layer_names), "settings": settings_of(SharpnessConfig(), m)}
            for m, v in (("norm", norm), ("dist_init", dist))}


def default_epochs(run) -> list[int]:
    """The epochs the atlas is computed at by default: those with SAL (to compare), else the last."""
    epochs = [int(e) for e in run.sal_epochs if 1 <= e <= run.epochs_done]
    return epochs or [run.epochs_done]


def _with(config: SharpnessConfig, measures: tuple) -> SharpnessConfig:
    from dataclasses import replace
    return replace(config, measures=measures)


# -- the atlas: measures beside SAL -----------------------------------------------------------

def atlas_frames(sharp: dict, layer_names: list[str]) -> dict:
    """measure -> DataFrame (rows = epochs, columns = layers) from :func:`read_sharpness`'s dict."""
    import pandas as pd
    return {m: pd.DataFrame(s["values"], index=pd.Index(s["epochs"], name="epoch"), columns=layer_names)
            for m, s in sharp.items()}


def sal_correlations(frames: dict, sal_frame) -> "pd.DataFrame":
    """Spearman rank correlation of each measure with SAL, over the (epoch, layer) cells both
    have, and the mean over those epochs of the per-epoch correlation across layers."""
    import pandas as pd
    rows = []
    for m, frame in frames.items():
        common = [e for e in frame.index if e in set(sal_frame.index)]
        if not common:
            rows.append({"measure": m, "label": LABELS[m], "rho_all": np.nan, "rho_per_epoch": np.nan,
                         "epochs": 0})
            continue
        a, b = frame.loc[common].to_numpy(), sal_frame.loc[common, frame.columns].to_numpy()
        per_epoch = [spearman(a[i], b[i]) for i in range(len(common))]
        rows.append({"measure": m, "label": LABELS[m], "rho_all": spearman(a.ravel(), b.ravel()),
                     "rho_per_epoch": float(np.nanmean(per_epoch)) if not np.all(np.isnan(per_epoch)) else np.nan,
                     "epochs": len(common)})
    return pd.DataFrame(rows)


def spearman(a, b) -> float:
    """Spearman's rank correlation of two equal-length arrays (average ranks for ties); NaN when
    either is constant or fewer than 3 finite pairs."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3:
        return float("nan")
    import pandas as pd
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()  # ties: average ranks
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def sharpest_layers(frames: dict, sal_frame=None, k: int = 3) -> "pd.DataFrame":
    """The `k` layers each measure (and SAL, if given) ranks highest, averaged over its epochs."""
    import pandas as pd
    items = dict(frames)
    if sal_frame is not None and len(sal_frame):
        items = {"sal": sal_frame, **items}
    rows = {}
    for m, frame in items.items():
        mean = frame.mean(axis=0).sort_values(ascending=False)
        rows[LABELS.get(m, "SAL")] = list(mean.index[:k]) + [""] * (k - min(k, len(mean)))
    return pd.DataFrame(rows, index=pd.Index(range(1, k + 1), name="rank"))
