"""Density and coverage (Naeem et al. 2020) with k-nearest-neighbour balls around the real features.

Only the real set defines balls: B_i is the ball around real feature X_i whose radius is the
distance from X_i to its k-th nearest real neighbour. With N real and M fake features,

    density  = 1 / (k M) * sum_j #{i : Y_j in B_i}       (how many real balls hold each fake, / k)
    coverage = 1 / N     * #{i : some Y_j in B_i}         (fraction of real balls holding a fake)

Unlike improved recall, coverage does not build balls around the fakes, so a few fake outliers
(large fake balls) cannot cover the data, and a collapsed generator (all fakes near one point)
covers only the balls near that point. Density is not bounded by 1: fakes crowded where the
real data is dense score above 1, samples spread like the real data score about 1.
"""

from __future__ import annotations

import torch

from gandist.metrics.precision_recall import knn_radii


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5, batch: int = 1024) -> tuple[float, float]:
    """(density, coverage) of fake features against real features (N x D and M x D), k-NN radii of the reals."""
    real = real.detach().to("cpu", torch.float32)
    fake = fake.detach().to("cpu", torch.float32)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"density/coverage needs two feature matrices of the same width, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}"
        )
    if fake.shape[0] == 0:
        raise ValueError("density/coverage of an empty fake set")
    radii = knn_radii(real, k, batch)
    covered = torch.zeros(real.shape[0], dtype=torch.bool)
    inside_count = 0
    for start in range(0, fake.shape[0], batch):
        inside = torch.cdist(fake[start : start + batch], real) <= radii[None, :]
        inside_count += int(inside.sum())
        covered |= inside.any(dim=0)
    return inside_count / (k * fake.shape[0]), float(covered.float().mean())
