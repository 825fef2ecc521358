"""Fréchet distance between Gaussians fitted to two sets of features (FID when the features are Inception's).

    FD = ||mu_1 - mu_2||^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))

tr((S_1 S_2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
symmetric matrix S_1^(1/2) S_2 S_1^(1/2) (same eigenvalues as S_1 S_2), in float64: exact for
positive semi-definite covariances and free of the complex round-off of a general sqrtm.
"""

from __future__ import annotations

import torch


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (unbiased, N - 1) of N x D features, in float64 on the CPU."""
    f = features.detach().to("cpu", torch.float64)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"feature_stats needs an N x D matrix with N >= 2, got shape {tuple(f.shape)}")
    return f.mean(dim=0), torch.cov(f.T).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    s1, s2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.numel(), mu1.numel()):
        raise ValueError(
            f"Fréchet distance of mismatched statistics: means {tuple(mu1.shape)} / {tuple(mu2.shape)}, "
            f"covariances {tuple(s1.shape)} / {tuple(s2.shape)} (features from different networks?)"
        )
    root = _psd_sqrt((s1 + s1.T) / 2)
    middle = root @ s2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * trace_sqrt
    return float(value.clamp(min=0))
