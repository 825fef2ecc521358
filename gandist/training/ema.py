"""Exponential moving average of G's weights (G_ema), with a half-life counted in images.

As in StyleGAN2-ADA: after a step that showed `batch` images, G_ema = lerp(G, G_ema, beta) with
beta = 0.5 ** (batch / half_life_images), so the averaging horizon does not depend on the batch
size or the number of GPUs. An optional ramp-up limits the half-life to a fraction of the images
seen so far, so early G_ema is not dominated by the random initial weights. Buffers (BatchNorm
running statistics) are copied, not averaged; `refresh_batchnorm_stats` re-estimates them for the
averaged weights before G_ema is used (grids, metrics, checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

# G_ema is held the way the strategy holds G (a copy, or ZeRO-3 partitions): the averaging lives there
from gandist.strategy.ema import make_ema, update_ema  # noqa: F401 - the single-module versions, for tools and tests


def ema_beta(batch: int, nimg: int, ema_kimg: float, rampup: float) -> float:
    """Decay for one step of `batch` images after `nimg` images seen (0 means copy G)."""
    half_life = ema_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, nimg * rampup)
    if half_life <= 0:
        return 0.0
    return 0.5 ** (batch / half_life)


@torch.no_grad()
def refresh_batchnorm_stats(
    G_ema: nn.Module,
    z_dim: int,
    num_classes: int,
    device: torch.device,
    seed: int,
    batches: int = 16,
    batch: int = 64,
) -> bool:
    """Re-estimate G_ema's BatchNorm running statistics for its own averaged weights; False if it has none.

    The statistics copied from G belong to G's current weights, not to the average: with them an
    EMA of a BatchNorm generator can sample worse than G itself. Here G_ema runs in train mode on
    `batches` batches of fresh noise (fixed seed: every rank gets the same statistics, and a
    repeated refresh gives the same result) and each BatchNorm keeps the plain average of those
    batch statistics (momentum None).
    """
    norms = [m for m in G_ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return False
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    generator = torch.Generator().manual_seed(seed)
    was_training = G_ema.training
    G_ema.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch, z_dim, generator=generator).to(device)
            c = torch.randint(0, num_classes, (batch,), generator=generator).to(device) if num_classes else None
            G_ema(z, c)
    finally:
        G_ema.train(was_training)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return True
