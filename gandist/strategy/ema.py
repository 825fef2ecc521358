"""G_ema held the way the strategy holds G: a full copy, or under ZeRO-3 this rank's partition of it.

    FullEma      one process, DDP, ZeRO 0-2: a frozen deep copy of G, lerped towards G after each step
    ShardedEma   ZeRO-3: for every parameter of G, the same partition this rank holds of G (`ds_tensor`),
                 lerped towards it locally: no all-gather per step and 1/N of G's weights per rank, where a
                 full copy would put back on every rank the memory ZeRO-3 removed.

Both average parameters and copy buffers (BatchNorm statistics, StyleGAN2's w_avg) as training/ema.py
describes. `using()` yields a module holding G_ema's weights, to run without gradients: the copy itself,
or under ZeRO-3 G's own module with G_ema's partitions swapped in (tensor handles exchanged, nothing
copied), so each layer gathers G_ema's weights as it runs, exactly as G's layers do in training. Under
ZeRO-3 that is a collective: every rank must enter and make the same forward calls.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from torch import nn


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen copy of G to hold the averaged weights."""
    G_ema = copy.deepcopy(G).eval()
    G_ema.requires_grad_(False)
    return G_ema


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers copied from G."""
    lerp_([p.detach() for p in G_ema.parameters()], [p.detach() for p in G.parameters()], beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def lerp_(averages: list[torch.Tensor], values: list[torch.Tensor], beta: float) -> None:
    """averages <- beta * averages + (1 - beta) * values, in place (beta 0: a copy)."""
    if beta == 0.0:
        torch._foreach_copy_(averages, values)
    else:
        torch._foreach_lerp_(averages, values, 1.0 - beta)


class FullEma:
    """G_ema as a whole module on every rank."""

    sharded = False

    def __init__(self, source: nn.Module):
        self.source = source
        self.module = make_ema(source)

    def update(self, beta: float) -> None:
        """One EMA step towards the source's current weights (local: no collective)."""
        update_ema(self.module, self.source, beta)

    @contextlib.contextmanager
    def using(self) -> Iterator[nn.Module]:
        """The module holding G_ema's weights, gradients off."""
        with torch.no_grad():
            yield self.module


class ShardedEma:
    """G_ema under ZeRO-3: this rank's partition (`ds_tensor`) of each of G's parameters, averaged where it is.

    `source` is G's engine module; `release()` partitions every gathered parameter of it (DeepSpeed's
    empty_partition_cache, persistent ones included), called around the swap so that no layer runs on, or
    keeps, weights gathered from the other set: inside, every layer gathers G_ema's partitions.
    """

    sharded = True

    def __init__(self, source: nn.Module, release: Callable[[], None]):
        self.source, self.release = source, release
        self.params = list(source.parameters())
        with torch.no_grad():
            self.tensors = [p.ds_tensor.detach().clone() for p in self.params]
            self.buffers = [b.detach().clone() for b in source.buffers()]

    def update(self, beta: float) -> None:
        """One EMA step on this rank's partitions (local: no collective)."""
        with torch.no_grad():
            lerp_(self.tensors, [p.ds_tensor.detach() for p in self.params], beta)
            for b_ema, b in zip(self.buffers, self.source.buffers()):
                b_ema.copy_(b)

    @contextlib.contextmanager
    def using(self) -> Iterator[nn.Module]:
        """G's module running on G_ema's weights (eval mode, gradients off); a collective, see the module doc."""
        was_training = self.source.training
        self.release()
        self._swap()
        try:
            with torch.no_grad():
                yield self.source.eval()
        finally:
            self._swap()
            self.release()  # drops what was gathered from G_ema's partitions; G's are gathered again when used
            self.source.train(was_training)

    def _swap(self) -> None:
        """Exchange G's and G_ema's partitions and buffers by handle: nothing is copied."""
        for p, ema in zip(self.params, self.tensors):
            p.ds_tensor.data, ema.data = ema.data, p.ds_tensor.data
        for b, ema in zip(self.source.buffers(), self.buffers):
            b.data, ema.data = ema.data, b.data

    def named_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(parameter name, this rank's partition of it in G_ema) for every parameter of G."""
        for (name, _), tensor in zip(self.source.named_parameters(), self.tensors):
            yield name, tensor
