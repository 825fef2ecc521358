"""Activation memory of one D phase, one G phase (and a lazy R1 phase) per micro-batch, measured without memory.

How it is measured: G and D are built inside torch's FakeTensorMode (tensors with shapes and dtypes but no
storage and no arithmetic: a 1B-parameter GAN costs nothing), as CPU tensors so that autocast applies, and
each phase runs once exactly as the training loop runs it (training/phases.py: the same losses,
augmentation, LeCam, gradient penalty, R1; forward and backward, then the optimizer step replaced by
dropping the gradients). A dispatch mode records every storage created and freed meanwhile. The phase's
activation memory is the peak of the live bytes, leaving out parameters and parameter gradients (the model
states, counted in accounting.py): it holds what autograd saves for the backward pass, the transients of
the backward and, under autocast, the half-precision copies of the weights. Autocast follows the CPU's
policy, which keeps a few ops (normalisations) in fp32 where CUDA's may not: at bf16 the figure is at most
a few percent off a GPU's.

Scaling: every tensor of these nets is either per sample (activations) or fixed (weight copies, per-layer
statistics), so the bytes live at any moment are a + b * n, and the peak over the phase is the largest of
such lines: a convex function of the micro-batch n, close to a line. Each phase is measured at a small
micro-batch n0 = max(1, N / 8) and at the largest one of interest N (the batch per rank: fake tensors
cost the same at any batch), and bytes(n) = fixed + per_sample * n is the chord through the two:
per_sample = (b(N) - b(n0)) / (N - n0), fixed = b(n0) - n0 * per_sample. Between n0 and N a chord of a
convex function lies above it, so the estimate errs on the safe side there (tests/unit/test_planning.py
checks it against direct measurements).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from gandist.config import Config
from gandist.models import build_nets
from gandist.objectives.augment import AugmentPipe
from gandist.objectives.losses import PAIRED, get_losses
from gandist.objectives.regularizers import LeCam
from gandist.reporting.stats import TickStats
from gandist.strategy import PRECISIONS
from gandist.training.phases import Phases


@dataclass(frozen=True)
class PhaseMemory:
    """Activation bytes of a phase per micro-batch: fixed + per_sample * n."""

    fixed: float
    per_sample: float

    def at(self, micro_batch: int) -> float:
        """Bytes at this micro-batch."""
        return max(0.0, self.fixed + self.per_sample * micro_batch)


class LiveBytes(TorchDispatchMode):
    """Records the bytes of every storage an op creates and when it is freed; the peak leaves some out."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}  # storage key -> (allocation id, bytes)
        self.events: list[tuple[int, int]] = []  # (allocation id, +bytes or -bytes) in order
        self.ids = itertools.count()
        # storages made before (parameters, buffers, inputs): views of them are not new memory
        self.existing = {t.untyped_storage()._cdata for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self.live and key not in self.existing:
                    aid, size = next(self.ids), storage.nbytes()
                    self.live[key] = (aid, size)
                    self.events.append((aid, size))
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        aid, size = self.live.pop(key)
        self.events.append((aid, -size))

    def ids_of(self, tensors: list[torch.Tensor]) -> set[int]:
        """Allocation ids of the live storages of these tensors."""
        keys = (t.untyped_storage()._cdata for t in tensors)
        return {self.live[k][0] for k in keys if k in self.live}

    def peak(self, leave_out: set[int]) -> int:
        """Largest sum of live bytes over time, without the allocations in `leave_out`."""
        now = best = 0
        for aid, size in self.events:
            if aid not in leave_out:
                now += size
                best = max(best, now)
        return best


class _Measuring:
    """The strategy interface Phases uses, on plain modules: backward is loss.backward(); a step drops the
    gradients (noting which allocations they were, so the peak leaves them out)."""

    accumulation = 1

    def __init__(self, nets: dict[str, nn.Module], dtype: torch.dtype | None, meter: LiveBytes):
        self.nets, self.dtype, self.meter = nets, dtype, meter
        self.device = torch.device("cpu")
        self.gradients: set[int] = set()

    def train_forward(self, name: str, eager: bool = False) -> nn.Module:
        return self.nets[name]

    @contextmanager
    def frozen(self, name: str) -> Iterator[nn.Module]:
        module = self.nets[name]
        module.requires_grad_(False)
        try:
            yield module
        finally:
            module.requires_grad_(True)

    def autocast(self):
        return torch.autocast("cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def backward(self, name: str, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, name: str, guard: bool = False) -> dict:
        grads = [p.grad for p in self.nets[name].parameters() if p.grad is not None]
        self.gradients |= self.meter.ids_of(grads)
        for p in self.nets[name].parameters():
            p.grad = None
        return {}

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def measure_phases(
    cfg: Config, precision: str, largest: int, checkpointing: bool | None = None
) -> dict[str, PhaseMemory]:
    """Activation memory per micro-batch of the D phase, the G phase and (train.r1_gamma or r2_gamma > 0) the R1 phase.

    precision: fp32, bf16 or fp16 (the run's resolved train.precision); largest: the largest micro-batch of
    interest (the batch per rank); checkpointing: override of model.activation_checkpointing (None: as set).
    """
    n0, n1 = max(1, largest // 8), max(largest, 2)
    n0 = min(n0, n1 - 1)
    at = {n: _measure_once(cfg, precision, n, checkpointing) for n in (n0, n1)}
    out = {}
    for phase in at[n0]:
        per_sample = (at[n1][phase] - at[n0][phase]) / (n1 - n0)
        out[phase] = PhaseMemory(fixed=at[n0][phase] - n0 * per_sample, per_sample=per_sample)
    return out


def _measure_once(cfg: Config, precision: str, n: int, checkpointing: bool | None) -> dict[str, int]:
    """Peak activation bytes of each phase at micro-batch n."""
    m, t, a = cfg.model, cfg.train, cfg.augment
    out = {}
    with FakeTensorMode(allow_non_fake_inputs=False):
        G, D = build_nets(m, t.seed)
        if checkpointing is not None:
            G.activation_checkpointing = D.activation_checkpointing = checkpointing
        real = torch.rand(n, m.channels, m.resolution, m.resolution) * 2 - 1
        z_d, z_g = torch.randn(n, m.z_dim), torch.randn(n, m.z_dim)
        labels = [torch.randint(0, m.num_classes, (n,)) for _ in range(3)] if m.num_classes else [None] * 3
        for phase in ("D", "G", "R1"):
            if phase == "R1" and not t.lazy_regularized:
                continue
            inputs = [real, z_d, z_g, *(c for c in labels if c is not None)]
            meter = LiveBytes([*G.parameters(), *D.parameters(), *G.buffers(), *D.buffers(), *inputs])
            strategy = _Measuring({"G": G, "D": D}, PRECISIONS[precision], meter)
            phases = Phases(
                strategy,
                *get_losses(t.loss),
                TickStats(strategy.device),
                AugmentPipe(a.diffaugment, a.ada, a.p, a.target, a.speed_kimg, strategy.device),
                LeCam(t.lecam_decay, strategy.device) if t.lecam_weight > 0 else None,
                t.lecam_weight,
                t.gp_weight,
                t.class_weight_d,
                t.class_weight_g,
                t.mode_seeking_weight,
                t.mode_seeking,
                paired=t.loss in PAIRED,
            )
            with meter:
                if phase == "D":
                    phases.d_phase(real, z_d, labels[0], labels[1])
                elif phase == "G":
                    phases.g_phase(z_g, labels[2], *((real, labels[0]) if phases.paired else ()))
                else:
                    phases.r1_phase(real, labels[0], t.r1_gamma, t.r1_interval, z_d, labels[1], t.r2_gamma)
            out[phase] = meter.peak(strategy.gradients)
    return out
