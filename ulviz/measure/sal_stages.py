"""The model as a chain of stages for the SAL searches: the unperturbed input of every stage
computed once for all samples (within a memory budget), a layer's suffix (its stage with the
weight swapped, then the rest), the order of the data in a search round, and the (X, Y) /
DataLoader reader the landscapes share.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ..core.errors import UlvizError
from ..models.registry import model_stages
from ..models.steps import correct_count


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.DataLoader):
        xs, ys = zip(*((b[0], b[1]) for b in data))  # one pass, in the loader's order
        x, y = torch.cat(xs), torch.cat(ys)
    else:
        raise UlvizError("data must be a DataLoader or an (X, Y) pair of tensors")
    if len(x) != len(y):
        raise UlvizError(f"data has {len(x)} inputs but {len(y)} labels")
    return x, y.long()


class _Chain:
    """The model as a chain of stages, with the unperturbed input of each stage computed once."""

    def __init__(self, net: nn.Module, x: torch.Tensor, batch_size: int, cache_bytes: int):
        self.stages = model_stages(net)
        self.n, self.batch_size, self.cache_bytes = len(x), batch_size, cache_bytes
        self.where = {}  # parameter object id -> (stage index, name inside the stage)
        for s, stage in enumerate(self.stages):
            for local, p in stage.named_parameters():
                self.where.setdefault(id(p), (s, local))
        self.params = dict(net.named_parameters())
        self._x = x
        self._cached = {0: x}  # stage index -> its input for all samples (when it fits the budget)

    def batches(self, order: torch.Tensor | None = None) -> list:
        idx = order if order is not None else torch.arange(self.n)
        return [idx[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]

    @torch.no_grad()
    def stage_input(self, s: int, b: torch.Tensor) -> torch.Tensor:
        """The input of stage `s` for the samples `b`, from the cache when it fits in memory,
        else computed from the nearest cached stage before it."""
        if s not in self._cached:
            self._fill_cache(s)
        if self._cached[s] is not None:
            return self._cached[s][b]
        k = self._source(s)
        h = self._cached[k][b]
        for stage in self.stages[k:s]:
            h = stage(h)
        return h

    def _source(self, s: int) -> int:
        """The highest stage below `s` whose input is held (0, the data, always is)."""
        return max(k for k, v in self._cached.items() if k < s and v is not None)

    @torch.no_grad()
    def _fill_cache(self, s: int) -> None:
        """Cache stage `s`'s input for all samples if it fits `cache_bytes` together with the
        cached input it is computed from; then drop every other cached stage input (the data
        excepted), so the cache never holds more than `cache_bytes`, however many stages."""
        k = self._source(s)
        src, batches = self._cached[k], self.batches()
        first = self._run(k, s, src[batches[0]])
        held = src.numel() * src.element_size() if k != 0 else 0
        if self.n * first[0].numel() * first.element_size() + held > self.cache_bytes:
            self._cached[s] = None  # too big to keep: recomputed per batch instead
            return
        channels_last = first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last)
        out = torch.empty((self.n, *first.shape[1:]), dtype=first.dtype, device=first.device,
                          memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        out[batches[0]] = first
        for b in batches[1:]:
            out[b] = self._run(k, s, src[b])
        for j in [j for j, v in self._cached.items() if j not in (0, s) and v is not None]:
            del self._cached[j]  # refilled on demand if a later layer needs it again
        self._cached[s] = out

    def _run(self, k: int, s: int, h: torch.Tensor) -> torch.Tensor:
        for stage in self.stages[k:s]:
            h = stage(h)
        return h

    @torch.no_grad()
    def evaluate_unperturbed(self, y: torch.Tensor) -> tuple[float, float]:
        total, correct = 0.0, 0
        for b in self.batches():
            out = self._x[b]
            for stage in self.stages:
                out = stage(out)
            total += F.cross_entropy(out, y[b]).item() * len(b)
            correct += correct_count(out, y[b]).item()
        return total / self.n, correct / self.n

    def suffix_for(self, name: str) -> "_Suffix":
        s, local = self.where[id(self.params[name])]
        return _Suffix(self, s, local, self.params[name].detach())


class _Suffix:
    """logits = f(w, batch): stage `s` with its weight `local` replaced by w, then the rest."""

    def __init__(self, chain: _Chain, s: int, local: str, w0: torch.Tensor):
        self.chain, self.s, self.local, self.w0 = chain, s, local, w0
        stage = chain.stages[s]
        self.frozen = {k: v.detach() for k, v in stage.named_parameters()}
        self.frozen.update({k: v for k, v in stage.named_buffers()})
        self.stage, self.rest = stage, chain.stages[s + 1:]

    def logits(self, w: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.local == "weight" and type(self.stage) in (nn.Linear, nn.Conv2d):
            # the common case (a Sequential's own layer), without functional_call's module swap
            out = self.stage._conv_forward(h, w, self.stage.bias) if isinstance(self.stage, nn.Conv2d) \
                else F.linear(h, w, self.stage.bias)
        else:
            out = functional_call(self.stage, {**self.frozen, self.local: w}, (h,))
        for stage in self.rest:
            out = stage(out)
        return out

    def loss(self, w, h, y):
        return F.cross_entropy(self.logits(w, h), y)

    def input(self, b):
        return self.chain.stage_input(self.s, b)


def _round_order(chain: _Chain, st: dict, r: int) -> torch.Tensor | None:
    """The order of the data in search round `r`: reshuffled per round with the seed when
    `shuffle`, else None (as stored)."""
    if not st["shuffle"]:
        return None
    return torch.randperm(chain.n, generator=torch.Generator().manual_seed(st["seed"] * 7919 + r))
