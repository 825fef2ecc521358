"""Fault injection for tests (the debug config section): an exception or a NaN loss at chosen steps.

Built only when a debug key is set, so the training step itself carries none of it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gandist.config import DebugConfig


def _nan(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda *args: loss(*args) * float("nan")


class DebugFaults:
    """debug.fail_at_step / fail_rank and debug.nan_at_steps / nan_rank of one rank."""

    def __init__(self, cfg: DebugConfig, rank: int):
        self.cfg, self.rank = cfg, rank
        self.d_loss: Callable[..., torch.Tensor] | None = None  # the real D loss while a poisoned one is in place

    @staticmethod
    def wanted(cfg: DebugConfig) -> bool:
        """Whether the config asks for any injected fault."""
        return cfg.fail_at_step >= 0 or bool(cfg.nan_at_steps)

    def before_step(self, step: int, phases) -> None:
        """Raise the injected failure at its step; make this step's D loss NaN where asked (undone the step after)."""
        cfg = self.cfg
        if step == cfg.fail_at_step and self.rank == cfg.fail_rank:
            raise RuntimeError(f"debug.fail_at_step={cfg.fail_at_step}: injected failure on rank {self.rank}")
        if self.d_loss is not None:
            phases.d_loss, self.d_loss = self.d_loss, None
        if step in cfg.nan_at_steps and cfg.nan_rank in (-1, self.rank):
            self.d_loss = phases.d_loss
            phases.d_loss = _nan(self.d_loss)
