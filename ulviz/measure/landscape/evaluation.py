"""Evaluating a model at many points of weight space at once, sharing what does not depend on
them (see :class:`_Evaluator` and the package docstring): the heart of the landscapes' speed.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional as F

from ...core.errors import UlvizError
from ...models.registry import model_stages
from .directions import Direction


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
