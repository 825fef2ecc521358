"""Layers shared by the architectures."""

from __future__ import annotations

import torch


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one channel: the average std of features over groups of samples (lets D see variety)."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.reshape(g, n // g, c, h, w).float()
    y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # one value per group member index
    y = y.to(x.dtype).reshape(n // g, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], dim=1)
