"""Each net's optimizer: Adam from its config section, and the lazy-regularisation adjustment of StyleGAN2."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch

from gandist.config import OptimizerConfig
from gandist.training.device import resolve_fused


def lazy_regularization_opt(opt_cfg: OptimizerConfig, interval: int) -> OptimizerConfig:
    """Adam settings of a net regularised every `interval` steps (StyleGAN2): lr and betas scaled by k/(k+1)."""
    ratio = interval / (interval + 1)
    return replace(opt_cfg, lr=opt_cfg.lr * ratio, betas=tuple(b**ratio for b in opt_cfg.betas))


def make_optimizer(
    params: Iterable[torch.nn.Parameter], opt_cfg: OptimizerConfig, device_type: str = "cpu"
) -> torch.optim.Adam:
    """Adam for one net whose parameters live on `device_type`: fused on CUDA (opt_cfg.fused=auto), else torch's
    default (foreach)."""
    fused = True if resolve_fused(opt_cfg.fused, device_type) else None
    return torch.optim.Adam(
        params,
        lr=opt_cfg.lr,
        betas=tuple(opt_cfg.betas),
        eps=opt_cfg.eps,
        weight_decay=opt_cfg.weight_decay,
        fused=fused,
    )
