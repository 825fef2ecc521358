"""Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour manifolds.

Each set of features defines a manifold: the union of balls around its points, each ball's
radius the distance to the point's k-th nearest neighbour within the set. Precision is the
fraction of generated features inside the real manifold (are fakes realistic?); recall the
fraction of real features inside the generated manifold (is the data covered?).
"""

from __future__ import annotations

import torch


def knn_radii(features: torch.Tensor, k: int, batch: int = 1024) -> torch.Tensor:
    """Distance from each feature to its k-th nearest neighbour in the same set (itself excluded)."""
    if features.shape[0] <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} features, got {features.shape[0]}")
    radii = []
    for start in range(0, features.shape[0], batch):
        dist = torch.cdist(features[start : start + batch], features)
        radii.append(dist.kthvalue(k + 1, dim=1).values)  # the smallest distance is the point to itself
    return torch.cat(radii)


def coverage(manifold: torch.Tensor, radii: torch.Tensor, probes: torch.Tensor, batch: int = 1024) -> float:
    """Fraction of `probes` within radii[i] of some manifold[i]."""
    inside = []
    for start in range(0, probes.shape[0], batch):
        dist = torch.cdist(probes[start : start + batch], manifold)
        inside.append((dist <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of fake features against real features with k-NN manifolds."""
    real = real.detach().to("cpu", torch.float32)
    fake = fake.detach().to("cpu", torch.float32)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall of features of different sizes: {real.shape[1]} and {fake.shape[1]}")
    precision = coverage(real, knn_radii(real, k), fake)
    recall = coverage(fake, knn_radii(fake, k), real)
    return precision, recall
