"""Kernel Inception Distance (Bińkowski et al. 2018): an unbiased estimate of the squared MMD.

The kernel is the cubic polynomial k(x, y) = (x.y / d + 1)^3. The estimate averages the unbiased
MMD^2 over random subsets of equal size m from both sets (as in the reference implementation):
its expectation is 0 when both sets come from the same distribution, so single values can be
negative.
"""

from __future__ import annotations

import torch


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two equal-size samples (m x d) under the cubic polynomial kernel."""
    m, d = x.shape
    if y.shape != x.shape or m < 2:
        raise ValueError(
            f"mmd2_unbiased needs two m x d samples with m >= 2, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.mean()


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> float:
    """KID: mean unbiased MMD^2 over `num_subsets` random subsets (without replacement) of both sets."""
    real = real.detach().to("cpu", torch.float64)
    fake = fake.detach().to("cpu", torch.float64)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"KID of features of different sizes: {real.shape[1]} and {fake.shape[1]}")
    m = min(real.shape[0], fake.shape[0], subset_size)
    generator = generator or torch.Generator().manual_seed(0)
    total = torch.zeros((), dtype=torch.float64)
    for _ in range(num_subsets):
        x = fake[torch.randperm(fake.shape[0], generator=generator)[:m]]
        y = real[torch.randperm(real.shape[0], generator=generator)[:m]]
        total += mmd2_unbiased(x, y)
    return float(total / num_subsets)
