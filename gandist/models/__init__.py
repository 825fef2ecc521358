"""Generators and discriminators: plain single-device PyTorch modules (they import torch only)."""

from __future__ import annotations

from torch import nn

from gandist.models.dcgan import Discriminator, Generator


def build_models(
    arch: str, resolution: int, channels: int, z_dim: int, g_width: int, d_width: int
) -> tuple[nn.Module, nn.Module]:
    """Return (G, D) for an architecture name."""
    if arch == "dcgan":
        return (
            Generator(resolution, z_dim=z_dim, width=g_width, channels=channels),
            Discriminator(resolution, width=d_width, channels=channels),
        )
    raise ValueError(f"unknown architecture {arch!r} (known: dcgan)")


__all__ = ["Generator", "Discriminator", "build_models"]
