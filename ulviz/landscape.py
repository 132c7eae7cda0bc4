"""Loss landscapes: the loss and accuracy of a model along lines and planes in weight space.

A point of a plane is θ + α·d + β·e for the origin weights θ and two directions d, e (a line has
one). Directions are random with filter normalization (Li et al., NeurIPS 2018), layer
normalization or none; restricted to one weight tensor (the landscape that layer's SAL measures);
the straight line between two weight states; or given by the caller (the PCA directions of a
weight path, from :mod:`ulviz.trajectory`). Biases and normalization-layer parameters (every
tensor of one dimension or less) are left out of random directions unless `keep_biasbn`.

The model is evaluated in eval mode: batch-norm statistics stay frozen at the origin's running
averages, so a grid shows the loss of the network as it would be used, not of a training step.

Why it is fast. Grid points differ only in their weights, so the work that does not depend on
them is done once: the unperturbed stages before the first perturbed one run once over the data,
and the first perturbed stage, if it is a Linear or Conv layer, is linear in its weights, so its
output at (α, β) is ``r0 + α·r_d + β·r_e`` with three responses computed once; the points of one
grid row share ``r0 + α·r_d``, so each adds one term. The remaining stages run for many grid
points at a time: as batched matrix products when only Linear layers and activations are left,
with ``torch.func.functional_call`` under ``vmap`` on a GPU, or in a loop over points on the CPU
(see :class:`_Evaluator`); the loss of a chunk of points is one call over all its batches. All
of it happens on a private copy of the model; the caller's model is never modified. A plane's
directions use seeds `seed` and `seed + 1`, so a line with the same seed runs along the plane's
first axis.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from .core.devices import compute_device
from .core.errors import UlvizError, UnknownNameError
from .models.registry import model_stages

NORMALIZATIONS = ("filter", "layer", "none")
Direction = dict[str, torch.Tensor]  # parameter name -> tensor of its shape (zeros where left out)


@dataclass
class Landscape:
    """Loss and accuracy on a line (1-D) or a plane (2-D) of weight space."""

    coords: list[np.ndarray]  # one coordinate axis per direction (alphas, and betas for a plane)
    loss: np.ndarray  # mean cross-entropy, shape (len(alphas),) or (len(alphas), len(betas))
    acc: np.ndarray  # accuracy in [0, 1], same shape
    directions: list[Direction] = field(repr=False)  # the directions used (on the CPU)
    settings: dict = field(default_factory=dict)  # how it was made (kind, normalization, seed, ...)

    @property
    def is_plane(self) -> bool:
        return len(self.coords) == 2


# -- directions -----------------------------------------------------------------------------

def random_direction(model: nn.Module, *, normalization: str = "filter", seed: int = 0, keep_biasbn: bool = False,
                     layer: str | None = None, state: Direction | None = None) -> Direction:
    """A Gaussian direction shaped like the model's parameters, normalized against the weights.

    "filter": each filter (a slice along the first dimension of a weight: a conv filter, a row of a
    linear layer) is rescaled to the norm of the matching filter of the weights; "layer": each
    tensor to the norm of its weights; "none": left as drawn. One-dimensional tensors (biases,
    batch-norm scales and shifts) are zero unless `keep_biasbn`, then rescaled as a whole. With
    `layer`, every tensor but that one is zero. `state` gives the weights to normalize against
    (the model's own by default); the draw depends only on `seed` and the shapes.
    """
    if normalization not in NORMALIZATIONS:
        raise UnknownNameError("normalization", normalization, list(NORMALIZATIONS))
    weights = _params(model, state)
    if layer is not None and layer not in weights:
        raise UlvizError(f"not a parameter of the model: {layer!r} (parameters: {', '.join(weights)})")
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        d = torch.randn(w.shape, generator=g, dtype=torch.float64)  # drawn for every tensor: same seed, same d
        left_out = (layer is not None and name != layer) or (w.dim() <= 1 and not keep_biasbn)
        out[name] = torch.zeros_like(w) if left_out else _normalized(d, w.double().cpu(), normalization).to(w.dtype)
    return out


def _normalized(d: torch.Tensor, w: torch.Tensor, normalization: str) -> torch.Tensor:
    if normalization == "none":
        return d
    if normalization == "layer" or w.dim() <= 1:
        return d * (w.norm() / d.norm().clamp_min(1e-12))
    dn = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    wn = w.flatten(1).norm(dim=1)
    return d * (wn / dn).reshape(-1, *[1] * (d.dim() - 1))


def difference_direction(a: Direction, b: Direction) -> Direction:
    """b - a for two states of the same parameters (the line from a to b)."""
    if set(a) != set(b) or any(a[n].shape != b[n].shape for n in a):
        raise UlvizError("the two weight states do not have the same parameters and shapes")
    return {n: (b[n].double() - a[n].double()).to(a[n].dtype) for n in a}


def _params(model: nn.Module, state: Direction | None = None) -> Direction:
    own = {n: p.detach().cpu() for n, p in model.named_parameters()}
    if state is None:
        return own
    missing = [n for n in own if n not in state]
    if missing:
        raise UlvizError(f"the weight state lacks parameters: {', '.join(missing[:5])}")
    return {n: state[n].detach().cpu().to(own[n].dtype) for n in own}


# -- evaluation -----------------------------------------------------------------------------

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.Dropout)
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_FORCE_MODE: str | None = None  # tests set "loop" / "vmap" / "dense" to check that every mode agrees
_CHANNELS_LAST: bool | None = None  # tests force the loop's layout (default: channels-last for wide convolutions on the CPU)


class _Evaluator:
    """Loss and accuracy at many points θ + Σ c_j·d_j, sharing what does not depend on them.

    The stages after the shared part run in one of three ways, whichever is fastest for them:
    "dense" (only Linear layers and elementwise activations left: batched matrix products over
    many points, features-major so the skinny last layer is one efficient product per point),
    "vmap" (anything else on a GPU) or "loop" (anything else on the CPU, where a vmapped
    convolution is slower than a loop over points). Every mode computes the same function.
    """

    def __init__(self, model: nn.Module, origin: Direction, directions: Sequence[Direction], x, y, *,
                 batch_size: int | None, device: torch.device, memory_bytes: int | None):
        net = _fast_pooling(copy.deepcopy(model).to(device).eval())  # ours to load the origin into
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(origin[n])
        self.device, self.y = device, y.to(device)
        self.dtype = dtype = next(net.parameters()).dtype
        names = {id(p): n for n, p in net.named_parameters()}
        stages = model_stages(net)
        moving = {n for d in directions for n, t in d.items() if t.count_nonzero() > 0}
        if not moving:
            raise UlvizError("every direction is zero: nothing to evaluate")
        first = next(i for i, s in enumerate(stages) if any(names[id(p)] in moving for p in s.parameters()))
        self.dirs = [{n: d[n].to(device, dtype) for n in moving} for d in directions]
        head = stages[first]
        self.linear_head = isinstance(head, _LAYERS)  # its output is linear in its weights: r0 + Σ c_j·r_j
        self.rest = nn.Sequential(*stages[first + 1:] if self.linear_head else stages[first:])
        mods = [m for m in self.rest.modules() if not isinstance(m, nn.Sequential)]
        dense = all(isinstance(m, (nn.Linear, *_ELEMENTWISE)) for m in mods) and (not self.linear_head or isinstance(head, nn.Linear))
        self.mode = _FORCE_MODE or ("dense" if dense else "vmap" if device.type == "cuda" else "loop")
        on_cpu = device.type == "cpu"
        # dense work on the CPU goes in blocks that stay near its caches: a batch's widest
        # activation about 192 KB per point, at least 256 samples (the mlp, 512 wide: 256 samples,
        # 1.3x faster than 1 MB; 128 wide: 360 samples, 1.15x faster than 719; a linear model: all
        # samples at once), 32 MB of activations per chunk (1.3x faster than 16 or 64 MB on the
        # mlp); elsewhere large batches keep the device busy
        widest = max([m.out_features for m in (head, *self.rest.modules()) if isinstance(m, nn.Linear)], default=1)
        self.batch = batch_size or (min(4096, max(256, (48 << 10) // widest)) if self.mode == "dense" and on_cpu
                                    else 2048)
        # equal batches, the last one padded (its padding masked out of the loss): the logits of a
        # chunk then fill one (batches, points, classes, samples) buffer and the loss is one call
        n = len(x)
        nb = math.ceil(n / self.batch)
        self.batch = math.ceil(n / nb)
        pad = nb * self.batch - n
        self.n = n
        self.y = F.pad(y.to(device), (0, pad)).view(nb, self.batch)
        self.valid = None if pad == 0 else (torch.arange(nb * self.batch, device=device) < n).view(nb, self.batch)
        with torch.no_grad():  # the stages before the first perturbed one: once, for every point
            xs = x.to(device, dtype)
            xs = torch.cat([xs, xs.new_zeros(pad, *xs.shape[1:])]) if pad else xs
            self.h = [_run(stages[:first], xs[i:i + self.batch]) for i in range(0, len(xs), self.batch)]
            if self.mode == "dense" and (self.h[0].dim() != 2 or not dense):
                self.mode = "vmap" if device.type == "cuda" else "loop"
            # wide convolutions through channels-last on the CPU, where oneDNN runs them without
            # reordering each call's input and output (the cnn: 35 against 51-68 ms a point);
            # narrow ones are faster in the default layout (lenet5's 6 channels: 1.7 against 2.4)
            probe = head(self.h[0][:1]) if self.linear_head else self.h[0][:1]
            convs = [m for m in self.rest.modules() if isinstance(m, nn.Conv2d)]
            wide = bool(convs) and min(m.in_channels for m in convs) >= 16
            self.channels_last = (_CHANNELS_LAST if _CHANNELS_LAST is not None else on_cpu and wide) \
                and self.mode == "loop" and probe.dim() == 4 and bool(convs)
            perms = _channels_last(self.rest, probe) if self.channels_last else {}
            if self.channels_last and not self.linear_head:
                self.h = [h.contiguous(memory_format=torch.channels_last) for h in self.h]
            if self.mode == "loop" and on_cpu:
                _inplace_relus(self.rest, first_is_ours=self.linear_head)
                _pad_narrow_linears(self.rest)
            if self.linear_head:
                hw, hb = names[id(head.weight)], names[id(head.bias)] if head.bias is not None else None
                # per batch: the origin's output and the directions' responses, stacked
                self.responses = [(head(h), torch.stack([
                    _layer_response(head, h, d.get(hw), d.get(hb) if hb else None) for d in self.dirs]))
                    for h in self.h]
                self.input_shape = self.responses[0][0].shape
                if self.mode == "dense":  # features-major: (features, samples)
                    self.responses = [(r0.t().contiguous(), r.transpose(1, 2).contiguous()) for r0, r in self.responses]
                elif self.channels_last:  # stored (samples, height, width, channels): see _inputs
                    self.responses = [(r0.permute(0, 2, 3, 1).contiguous(), r.permute(0, 1, 3, 4, 2).contiguous())
                                      for r0, r in self.responses]
        local = {id(p): n for n, p in self.rest.named_parameters()}
        self.rest_names = {local[id(p)]: names[id(p)] for p in self.rest.parameters() if names[id(p)] in moving}
        self.rest_fixed = {n: p for n, p in self.rest.named_parameters() if names[id(p)] not in moving}
        self.rest_fixed.update(dict(self.rest.named_buffers()))
        self.origin = {n: origin[n].to(device, dtype) for n in self.rest_names.values()}
        self.rest_dirs = {local: torch.stack([d[full] for d in self.dirs]) for local, full in self.rest_names.items()}
        self.rest_params = dict(self.rest.named_parameters())
        for local, full in self.rest_names.items():  # a Linear after a channels-last Flatten reads (h, w, c) order
            perm = perms.get(id(self.rest_params[local]))
            if perm is not None:
                self.origin[full] = self.origin[full][:, perm]
                self.rest_dirs[local] = self.rest_dirs[local][:, :, perm].contiguous()
        self.dense_stages = [(name, m) for name, m in self.rest.named_modules()
                             if isinstance(m, (nn.Linear, *_ELEMENTWISE)) and not isinstance(m, (nn.Identity, nn.Dropout))]
        # on the CPU, 16 MB per thread: every thread needs its share of each batched call (the
        # mlp on 16 threads: 3.1x loss-landscapes with 192-384 MB, 2.0x with 32 MB)
        budget = memory_bytes or (min(256, max(32, 16 * torch.get_num_threads())) << 20 if on_cpu else 1 << 30)
        per_point, self.classes = self._per_point()
        self.chunk = 32 if self.mode == "loop" else max(1, min(1024, budget // per_point))
        # reused per chunk: fresh buffers this size cost more in page faults than the arithmetic
        self._scratch: torch.Tensor | None = None  # the inputs of the remaining stages
        self._bases: list | None = None  # per batch: (row, the part of those inputs shared along it)
        self._logits: torch.Tensor | None = None  # (batches, points, classes, samples)

    def _per_point(self) -> tuple[int, int]:
        """Bytes of activations one grid point needs (all stages of one data batch, the logits of
        every batch), with room for temporaries; and the number of classes."""
        h = self.responses[0][0] if self.linear_head else self.h[0]
        if self.mode == "dense" and self.linear_head:
            h = h.t()
        elif self.channels_last and self.linear_head:
            h = h.permute(0, 3, 1, 2)
        with torch.no_grad():
            numel = h.numel()
            out = h[:1].clone()  # a copy: the first stage may be an in-place ReLU
            for stage in self.rest:
                out = stage(out)
                numel += out[0].numel() * len(h)
        numel += out[0].numel() * len(h) * (len(self.h) - 1)
        return numel * h.element_size() * 2, out.shape[-1]

    def __call__(self, coords: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy at each row of `coords` (points, directions)."""
        losses, accs = [], []
        for i in range(0, len(coords), self.chunk):
            loss, acc = self._chunk(coords[i:i + self.chunk].to(self.device, self.dtype))
            losses.append(loss)
            accs.append(acc)
        return np.concatenate(losses), np.concatenate(accs)

    def _chunk(self, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        k = len(c)
        params = {local: _combine(c, self.rest_dirs[local], base=self.origin[full])
                  for local, full in self.rest_names.items()}
        rows = _rows(c)
        shape = (len(self.h), max(k, self.chunk), self.classes, self.batch)
        if self._logits is None or self._logits.shape != shape:
            self._logits = torch.empty(shape, dtype=self.dtype, device=self.device)
        logits = self._logits[:, :k]  # (batches, points, classes, samples)
        with torch.no_grad():
            for b in range(len(self.h)):
                if self.mode == "loop":
                    for j in range(k):
                        # the point's weights written into our private copy: cheaper than a
                        # functional_call per point, and the caller's model is a different object
                        for local, v in params.items():
                            self.rest_params[local].copy_(v[j])
                        logits[b, j] = self.rest(self._inputs(b, c[j:j + 1], [(0, 1)])[0]).t()
                elif self.mode == "dense":  # written straight into the logits buffer
                    self._dense(params, self._inputs(b, c, rows, out=logits[b]), out=logits[b])
                else:
                    logits[b] = self._vmapped(params, self._inputs(b, c, rows)).transpose(1, 2)
            loss, correct = _loss_and_correct(logits, self.y, self.valid)
        return (loss / self.n).cpu().numpy(), (correct / self.n).cpu().numpy()

    def _inputs(self, b: int, c: torch.Tensor, rows: list[tuple[int, int]],
                out: torch.Tensor | None = None) -> torch.Tensor:
        """The input of the remaining stages at each point of `c`: (points, *batch shape), written
        into `out` when no stages remain (then it is the logits) and our scratch buffer otherwise.

        For a linear head that is r0 + Σ_j c_j·r_j. Points of one grid row share every coordinate
        but the last, so the shared part is formed once per row and each point adds only its last
        term: one pass over the (large) output per point instead of one per direction."""
        if self.linear_head:
            r0, r = self.responses[b]
            need = len(c) * r0.numel()
            if len(self.rest) == 0 and out is not None:
                out = out.view(len(c), -1)
            else:
                if self._scratch is None or self._scratch.numel() < need:
                    self._scratch = torch.empty(need, dtype=r0.dtype, device=r0.device)
                out = self._scratch[:need].view(len(c), -1)
            last = r[-1].reshape(1, -1)
            for start, stop in rows:
                base = r0 if len(r) == 1 else self._row_base(b, c[start, :-1])
                torch.addcmul(base.reshape(1, -1), c[start:stop, -1:], last, out=out[start:stop])
            if self.channels_last:  # (points, samples, h, w, c) memory seen as (points, samples, c, h, w)
                n, ch, hh, ww = self.input_shape
                return out.view(len(c), n, hh, ww, ch).permute(0, 1, 4, 2, 3)
            return out.view(len(c), *r0.shape)
        h = self.h[b]
        if self.mode == "dense":
            h = h.t()
        return h.unsqueeze(0).expand(len(c), *h.shape)

    def _row_base(self, b: int, lead: torch.Tensor) -> torch.Tensor:
        """r0 + Σ c_j·r_j over all directions but the last, for batch `b`; kept per batch, since the
        next chunk usually goes on along the same grid row."""
        key = tuple(lead.tolist())
        if self._bases is None:
            self._bases = [None] * len(self.h)
        if self._bases[b] is None or self._bases[b][0] != key:
            r0, r = self.responses[b]
            out = self._bases[b][1] if self._bases[b] is not None else torch.empty_like(r0)
            self._bases[b] = key, _combine(lead.view(1, -1), r[:-1], base=r0, out=out)[0]
        return self._bases[b][1]

    def _dense(self, params: dict, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Linear layers and activations on features-major inputs (points, features, samples);
        the logits, classes-major (points, classes, samples), end in `out`."""
        k = len(h)
        for i, (name, m) in enumerate(self.dense_stages):
            target = out if i == len(self.dense_stages) - 1 else None  # the last one writes the logits in place
            if isinstance(m, nn.Linear):
                w = params.get(f"{name}.weight", m.weight.expand(k, *m.weight.shape))
                bias = params.get(f"{name}.bias", None if m.bias is None else m.bias.expand(k, *m.bias.shape))
                h = torch.bmm(w, h, out=target) if bias is None else torch.baddbmm(bias.unsqueeze(2), w, h, out=target)
            elif isinstance(m, nn.ReLU):
                h = h.relu_() if h.is_contiguous() else h.relu()
            else:
                h = m(h)
        if h.data_ptr() != out.data_ptr():
            out.copy_(h)
        return out

    def _vmapped(self, params: dict, inp: torch.Tensor) -> torch.Tensor:
        if len(self.rest) == 0:
            return inp
        fixed = self.rest_fixed

        def one(p, h):
            return functional_call(self.rest, {**fixed, **p}, (h,))
        return vmap(one)(params, inp)


def _loss_and_correct(logits: torch.Tensor, y: torch.Tensor,
                      valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number of correct predictions per point, for logits of shape
    (batches, points, classes, samples) with labels `y` (batches, samples) and an optional mask
    `valid` of the samples that count (padding does not). logsumexp minus the true logit gives
    ``F.cross_entropy(..., reduction="sum")``.

    Argmax along a strided axis is slow, so a sample counts as correct when its true logit is the
    maximum and no other class ties it; argmax's first-maximum rule decides exact ties. Every
    maximum adds exp(0) = 1 to the softmax denominator, so a tie needs a denominator of at least
    2: only those samples are checked."""
    nb, k, _, s = logits.shape
    top = logits.amax(2, keepdim=True)
    sumexp = (logits - top).exp_().sum(2)
    top = top.squeeze(2)
    labels = y.view(nb, 1, s).expand(nb, k, s)
    picked = logits.gather(2, labels.unsqueeze(2)).squeeze(2)
    correct = picked == top
    maybe = (correct & (sumexp >= 2)).nonzero(as_tuple=True)
    if len(maybe[0]):
        candidates = logits[maybe[0], maybe[1], :, maybe[2]]  # (samples, classes)
        tied = (candidates == top[maybe].unsqueeze(1)).sum(1) > 1
        correct[maybe] = ~tied | (candidates.argmax(1) == labels[maybe])
    per_sample = sumexp.log_().add_(top).sub_(picked)
    if valid is not None:  # where, not a product: padding far out on a grid may overflow to inf
        per_sample.masked_fill_(~valid.unsqueeze(1), 0)
        correct &= valid.unsqueeze(1)
    return per_sample.sum((0, 2), dtype=torch.float64), correct.sum((0, 2), dtype=torch.float64)


def _rows(c: torch.Tensor) -> list[tuple[int, int]]:
    """(start, stop) of the runs of consecutive points that share every coordinate but the last."""
    lead = c[:, :-1].cpu()
    breaks = ((lead[1:] != lead[:-1]).any(1).nonzero().flatten() + 1).tolist() if lead.shape[1] else []
    edges = [0, *breaks, len(c)]
    return list(zip(edges[:-1], edges[1:]))


class _MaxPool2x2(nn.Module):
    """2x2 max pooling with stride 2 as the maximum of four strided views: the same values as
    ``nn.MaxPool2d(2)`` (floor mode), several times faster on the CPU for small maps. Used in
    forward-only evaluation; its gradient at ties differs, so training and SAL keep the original."""

    def forward(self, x):
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                             torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def _fast_pooling(net: nn.Module) -> nn.Module:
    """Replace plain 2x2 max-pooling layers of our private copy by :class:`_MaxPool2x2`."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.MaxPool2d) and _pair(child.kernel_size) == (2, 2)
                    and _pair(child.stride) == (2, 2) and _pair(child.padding) == (0, 0)
                    and _pair(child.dilation) == (1, 1) and not child.ceil_mode and not child.return_indices):
                setattr(parent, name, _MaxPool2x2())
    return net


def _channels_last(rest: nn.Sequential, probe: torch.Tensor) -> dict[int, torch.Tensor]:
    """Put our private copy's remaining stages on channels-last: every Conv2d weight in that
    layout, and each Flatten that is followed by a Linear replaced by one that flattens in
    (height, width, channels) order, a view of a channels-last tensor where the default order
    would copy it. Such a Linear's weight columns are permuted to match, so the result is the
    same function; returns {id of such a weight: column permutation} for the caller's copies."""
    for m in rest.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    perms = {}
    h = probe
    with torch.no_grad():
        for i, stage in enumerate(list(rest)):
            nxt = rest[i + 1] if i + 1 < len(rest) else None
            if _is_flatten(stage) and h.dim() == 4 and isinstance(nxt, nn.Linear):
                c, hh, ww = h.shape[1:]
                perm = torch.arange(c * hh * ww, device=h.device).view(c, hh, ww).permute(1, 2, 0).flatten()
                nxt.weight.data = nxt.weight.data[:, perm].contiguous()
                perms[id(nxt.weight)] = perm
                rest[i] = _FlattenChannelsLast()
            h = stage(h)
    return perms


class _FlattenChannelsLast(nn.Module):
    """Flatten of (samples, c, h, w) in (h, w, c) order: free for a channels-last tensor."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


def _is_flatten(stage: nn.Module) -> bool:
    """nn.Flatten from dimension 1, or a torch.fx piece that only calls ``torch.flatten(x, 1)``."""
    if isinstance(stage, nn.Flatten):
        return stage.start_dim == 1 and stage.end_dim == -1
    if isinstance(stage, torch.fx.GraphModule):
        calls = [n for n in stage.graph.nodes if n.op not in ("placeholder", "output")]
        return (len(calls) == 1 and not calls[0].kwargs and tuple(calls[0].args[1:]) == (1,)
                and (calls[0].target is torch.flatten or (calls[0].op == "call_method" and calls[0].target == "flatten")))
    return False


def _inplace_relus(rest: nn.Sequential, first_is_ours: bool) -> None:
    """ReLU stages of our private copy in place where their input is a fresh tensor of ours: the
    output of a layer, or the first stage's input when that is our scratch buffer (not when it is
    the shared output of the unperturbed stages, which every point reads)."""
    fresh = (*_LAYERS, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    for i, stage in enumerate(rest):
        if isinstance(stage, nn.ReLU) and (isinstance(rest[i - 1], fresh) if i else first_is_ours):
            stage.inplace = True


class _PaddedLinear(nn.Module):
    """A Linear with fewer than 16 outputs, computed with zero rows up to 16: MKL's kernel for 16
    columns is about twice as fast as for 10 on the CPU (a class head over 1437 samples: 0.34
    against 0.54 ms for 1024 inputs). The wrapped layer keeps its parameters, which the grid
    loop writes; they are copied into the padded ones at each call (a few KB)."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.layer = layer
        w = layer.weight
        self.register_buffer("weight16", w.new_zeros(16, w.shape[1]), persistent=False)
        self.register_buffer("bias16", w.new_zeros(16) if layer.bias is not None else None, persistent=False)

    def forward(self, x):
        n = self.layer.out_features
        self.weight16[:n].copy_(self.layer.weight)
        if self.bias16 is not None:
            self.bias16[:n].copy_(self.layer.bias)
        return F.linear(x, self.weight16, self.bias16)[..., :n]


def _pad_narrow_linears(rest: nn.Sequential) -> None:
    """Wrap the Linear stages of fewer than 16 outputs (class heads) in :class:`_PaddedLinear`."""
    for i, stage in enumerate(rest):
        if isinstance(stage, nn.Linear) and stage.out_features < 16:
            rest[i] = _PaddedLinear(stage)


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _run(stages, x):
    for s in stages:
        x = s(x)
    return x


def _layer_response(layer: nn.Module, h: torch.Tensor, dw: torch.Tensor | None, db: torch.Tensor | None) -> torch.Tensor:
    """The layer's output with weights (dw, db) in place of its own: how its output moves along
    the direction (zero for a part of the direction that leaves the layer out)."""
    dw = torch.zeros_like(layer.weight) if dw is None else dw
    if isinstance(layer, nn.Linear):
        return F.linear(h, dw, db)
    return layer._conv_forward(h, dw, db)


def _combine(c: torch.Tensor, stacked: torch.Tensor, base: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """base + Σ_j c[:, j] · stacked[j], one row per point: shape (points, *stacked.shape[1:]).

    Fused multiply-adds, one per direction: a matrix product with an inner size of 2 is several
    times slower, and this is the innermost operation of a grid. `out`, when given, is reused:
    on the CPU a fresh buffer of this size costs more in page faults than the arithmetic."""
    flat = stacked.reshape(len(stacked), 1, -1)
    c = c.to(stacked.dtype)
    shape = (len(c), flat.shape[2])
    if out is None:
        out = torch.empty(shape, dtype=stacked.dtype, device=stacked.device)
    out = out.view(shape)
    if base is None:
        torch.mul(c[:, :1], flat[0], out=out)
    else:
        torch.addcmul(base.reshape(1, -1).expand(shape), c[:, :1], flat[0], out=out)
    for j in range(1, len(flat)):
        out.addcmul_(c[:, j:j + 1], flat[j])
    return out.reshape(len(c), *stacked.shape[1:])


# -- public entry points --------------------------------------------------------------------

def plane(model: nn.Module, data, *, resolution: int = 41, span: float | tuple[float, float] = 1.0,
          normalization: str = "filter", seed: int = 0, batch_size: int | None = None, device=None,
          directions: Sequence[Direction] | None = None, keep_biasbn: bool = False, layer: str | None = None,
          origin: Direction | None = None, coarse: int | None = None, memory_bytes: int | None = None,
          known=None, on_points: Callable | None = None) -> Landscape:
    """Loss and accuracy on a `resolution` x `resolution` grid around the model's weights.

    `data` is a DataLoader or an (X, Y) pair. The axes run over `span` ((-span, span) or a
    (low, high) pair) along two directions: random ones (`normalization`, `seed`, `keep_biasbn`,
    `layer`) unless `directions` are given. `origin` replaces the model's own weights as the
    centre. `coarse` evaluates a sub-grid of that resolution first (see :func:`grid_order`).
    `known` (loss, acc, done) arrays skip finished points; `on_points(index, loss, acc)` is called
    after every chunk, so callers can cache and report progress.
    """
    dirs = list(directions) if directions is not None else [
        random_direction(model, normalization=normalization, seed=seed + i, keep_biasbn=keep_biasbn, layer=layer,
                         state=origin) for i in range(2)]
    if len(dirs) != 2:
        raise UlvizError("a plane needs two directions")
    axis = _axis(resolution, span)
    return _surface(model, data, dirs, [axis, axis], origin, batch_size, device, memory_bytes, coarse, known,
                    on_points, dict(kind="plane", resolution=resolution, span=_span(span), normalization=normalization,
                                    seed=seed, keep_biasbn=keep_biasbn, layer=layer))


def line(model: nn.Module, data, *, resolution: int = 41, span: float | tuple[float, float] = 1.0,
         normalization: str = "filter", seed: int = 0, batch_size: int | None = None, device=None,
         direction: Direction | None = None, keep_biasbn: bool = False, layer: str | None = None,
         origin: Direction | None = None, memory_bytes: int | None = None, known=None,
         on_points: Callable | None = None) -> Landscape:
    """Loss and accuracy at `resolution` points θ + α·d, α over `span`; arguments as :func:`plane`."""
    d = direction if direction is not None else random_direction(
        model, normalization=normalization, seed=seed, keep_biasbn=keep_biasbn, layer=layer, state=origin)
    return _surface(model, data, [d], [_axis(resolution, span)], origin, batch_size, device, memory_bytes, None,
                    known, on_points, dict(kind="line", resolution=resolution, span=_span(span),
                                           normalization=normalization, seed=seed, keep_biasbn=keep_biasbn, layer=layer))


def interpolation(model: nn.Module, data, start: Direction, end: Direction, *, resolution: int = 41,
                  span: tuple[float, float] = (-0.5, 1.5), batch_size: int | None = None, device=None,
                  memory_bytes: int | None = None, known=None, on_points: Callable | None = None) -> Landscape:
    """The straight line (1 - α)·start + α·end between two weight states of `model`'s architecture
    (α = 0 is `start`, α = 1 is `end`); buffers come from `model`."""
    start_p, end_p = _params(model, start), _params(model, end)
    return _surface(model, data, [difference_direction(start_p, end_p)], [_axis(resolution, span)], start_p,
                    batch_size, device, memory_bytes, None, known, on_points,
                    dict(kind="interp", resolution=resolution, span=_span(span)))


def grid_order(resolution: int, coarse: int | None) -> np.ndarray:
    """Flat indices of a resolution x resolution grid, the `coarse` x `coarse` sub-grid first.

    The sub-grid takes every k-th row and column, k = (resolution - 1) / (coarse - 1), so its
    points are points of the full grid and nothing is computed twice."""
    idx = np.arange(resolution * resolution)
    if not coarse or coarse >= resolution:
        return idx
    if coarse < 2 or (resolution - 1) % (coarse - 1):
        raise UlvizError(f"coarse resolution {coarse} does not divide the grid of {resolution}: "
                         f"(resolution - 1) must be a multiple of (coarse - 1)")
    k = (resolution - 1) // (coarse - 1)
    sub = (np.arange(0, resolution, k)[:, None] * resolution + np.arange(0, resolution, k)[None, :]).ravel()
    return np.concatenate([sub, np.setdiff1d(idx, sub)])


def coarse_view(land: Landscape, coarse: int) -> Landscape:
    """The `coarse` x `coarse` sub-grid of a plane (what :func:`plane` computes first)."""
    r = len(land.coords[0])
    k = (r - 1) // (coarse - 1)
    return Landscape([a[::k] for a in land.coords], land.loss[::k, ::k], land.acc[::k, ::k], land.directions,
                     {**land.settings, "resolution": coarse})


def _surface(model, data, dirs, axes, origin, batch_size, device, memory_bytes, coarse, known, on_points, settings):
    from .sal import _tensors  # the shared (X, Y) / DataLoader reader
    x, y = _tensors(data)
    if len(x) == 0:
        raise UlvizError("a landscape needs at least one sample")
    device = compute_device(device)
    origin_p = _params(model, origin)
    mesh = np.stack([m.ravel() for m in np.meshgrid(*axes, indexing="ij")], axis=1)  # (points, dims)
    shape = tuple(len(a) for a in axes)
    loss, acc, done = _known(known, mesh.shape[0])
    order = grid_order(shape[0], coarse) if len(axes) == 2 else np.arange(mesh.shape[0])
    todo = order[~done[order]]
    if len(todo):
        ev = _Evaluator(model, origin_p, dirs, x, y, batch_size=batch_size, device=device, memory_bytes=memory_bytes)
        step = ev.chunk
        for i in range(0, len(todo), step):
            idx = todo[i:i + step]
            l, a = ev(torch.from_numpy(mesh[idx]))
            loss[idx], acc[idx], done[idx] = l, a, True
            if on_points:
                on_points(idx, l, a)
    return Landscape([np.asarray(a, dtype=np.float64) for a in axes], loss.reshape(shape), acc.reshape(shape),
                     [{n: t.cpu() for n, t in d.items()} for d in dirs], settings)


def _known(known, n):
    if known is None:
        return np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    loss, acc, done = (np.asarray(a).ravel().copy() for a in known)
    if not (len(loss) == len(acc) == len(done) == n):
        raise UlvizError("cached landscape does not match the grid's size")
    return loss.astype(np.float64), acc.astype(np.float64), done.astype(bool)


def _axis(resolution: int, span) -> np.ndarray:
    if resolution < 2:
        raise UlvizError("a landscape needs a resolution of at least 2")
    lo, hi = _span(span)
    return np.linspace(lo, hi, resolution)


def _span(span) -> tuple[float, float]:
    if isinstance(span, (int, float)):
        lo, hi = -float(span), float(span)
    else:
        lo, hi = (float(v) for v in span)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UlvizError(f"a landscape's range must be two finite numbers, low < high; got {span!r}")
    return lo, hi


# -- landscapes of run files, cached in them ------------------------------------------------

KINDS = ("line", "plane", "interp", "pca")
SPLITS = ("train", "clean", "test")  # the data the run trained on (maybe protected), clean train, clean test


def run_model(run, epoch: int = -1) -> nn.Module:
    """A model of the run's architecture holding its weights at `epoch` (-1: the last finished)."""
    from .models.registry import create_model
    from .data.tasks import get_task
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
    from .protect.trainset import run_training_data
    # the run's inputs and targets: the images it trained on, digest-checked (ulviz.trainset)
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
    from .data.datasets import load_dataset
    return load_dataset(config)


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
    weight path, or of its path and `other`'s together, see :mod:`ulviz.trajectory`, centred on its
    final weights; `span` is then the
    margin around the path, as a fraction of its extent). `span` defaults to (-1, 1), (-0.5, 1.5)
    for "interp" and a margin of 0.25 for "pca". Points already cached are not recomputed;
    `compute=False` returns only what is cached (None if nothing is). With `cache_file` (see
    :func:`ulviz.store.landscape_cache_path`) the run file is only read: what it lacks is read
    from and written to that file instead.
    """
    from .store.runs import open_run
    from .store.caches import read_landscape, write_landscape_points
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
            settings.update(other=Path(other).name, other_run=other_run.name, other_epochs=len(other_run.metrics))
            start, end = model.state_dict(), other_run.snapshot(-1)
        else:
            start, end = run.snapshot(0), model.state_dict()
    else:
        from .trajectory import pca_plane
        plane_runs = [run]
        if other is not None:  # one plane for both paths (same architecture and initialization)
            plane_runs.append(open_run(other))
            settings.update(other=Path(other).name, other_run=plane_runs[1].name,
                            other_epochs=len(plane_runs[1].metrics))
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
    from .store.caches import list_landscapes
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
    from .store.caches import read_landscape
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
