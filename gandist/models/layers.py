"""Layers shared by the architectures, and activation checkpointing of their blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm
from torch.utils.checkpoint import checkpoint


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the average std of features over groups of samples (lets D see variety)."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.reshape(g, n // g, c, h, w).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # one value per group member index
    y = y.to(x.dtype).reshape(n // g, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)


def run_block(fn: Callable[..., torch.Tensor], modules: Sequence[nn.Module], *args, checkpointed: bool = False):
    """fn(*args), with its activations recomputed in the backward pass instead of kept when `checkpointed`.

    `modules` are those fn runs (a block, or a few layers of a Sequential): their buffers and spectral
    norms are replayed so that the recomputation sees exactly what the forward saw. Two things would
    otherwise differ: a spectral norm's power iteration runs once more (the weight seen by the gradient is
    not the one of the forward: a D is called twice per D phase, and the u, v of the second call would be
    used for the first), BatchNorm's running statistics would be updated twice, and a D frozen for the G
    phase (requires_grad off) is unfrozen again by the time G's backward recomputes it. Random numbers (noise
    inputs) are replayed by torch's checkpoint itself (preserve_rng_state).
    """
    if not checkpointed or not torch.is_grad_enabled():
        return fn(*args)
    contexts = partial(_replay_contexts, list(modules))
    return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)


def _replay_contexts(modules: list[nn.Module]) -> tuple[_KeepForwardState, _ReplayForwardState]:
    """(forward context, recomputation context) for torch's checkpoint."""
    keep = _KeepForwardState([b for m in modules for b in m.buffers()], [p for m in modules for p in m.parameters()])
    norms = [m for module in modules for m in module.modules() if isinstance(m, _SpectralNorm)]
    return keep, _ReplayForwardState(keep, norms)


class _KeepForwardState:
    """Around the forward: keeps the buffers as the forward left them (a spectral norm's u, v as it used them)
    and whether each parameter required gradients (a D frozen for the G phase is unfrozen before G's backward)."""

    def __init__(self, buffers: list[torch.Tensor], params: list[nn.Parameter]):
        self.buffers, self.params = buffers, params
        self.seen: list[torch.Tensor] = []
        self.requires_grad: list[bool] = []

    def __enter__(self) -> None:
        self.requires_grad = [p.requires_grad for p in self.params]

    def __exit__(self, *exc) -> None:
        self.seen = [b.detach().clone() for b in self.buffers]


class _ReplayForwardState:
    """Around each recomputation (one per backward through the block; R1 takes two): runs on the buffers the
    forward left, with power iterations off, and puts the current buffers back afterwards."""

    def __init__(self, keep: _KeepForwardState, norms: list[nn.Module]):
        self.keep, self.norms = keep, norms
        self.current: list[torch.Tensor] = []
        self.modes: list[bool] = []

    def __enter__(self) -> None:
        self.current = [b.detach().clone() for b in self.keep.buffers]
        self.modes = [m.training for m in self.norms]
        self.requires_grad = [p.requires_grad for p in self.keep.params]
        _copy(self.keep.buffers, self.keep.seen)
        for m in self.norms:
            m.training = False  # no power iteration: sigma from the u, v the forward used
        for p, flag in zip(self.keep.params, self.keep.requires_grad):
            p.requires_grad_(flag)

    def __exit__(self, *exc) -> None:
        _copy(self.keep.buffers, self.current)
        for m, mode in zip(self.norms, self.modes):
            m.training = mode
        for p, flag in zip(self.keep.params, self.requires_grad):
            p.requires_grad_(flag)


@torch.no_grad()
def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    if targets:
        torch._foreach_copy_(targets, sources)


def run_sequential(layers: nn.Sequential, x: torch.Tensor, ends: Sequence[int], checkpointed: bool) -> torch.Tensor:
    """Run a Sequential, checkpointing it in segments that end after the layers at indices `ends`."""
    if not checkpointed:
        return layers(x)
    start = 0
    for end in [*ends, len(layers) - 1]:
        if end < start:
            continue
        segment = layers[start : end + 1]
        x = run_block(segment, [segment], x, checkpointed=True)
        start = end + 1
    return x
