"""Generators and discriminators: plain single-device PyTorch modules (they import torch only).

Every G is called as G(z, c) and every D as D(x, c), with c the int64 class labels of a
class-conditional model (model.num_classes > 0) or None.
"""

from __future__ import annotations

from torch import nn

from gandist.models.dcgan import Discriminator, Generator
from gandist.models.resnet import ResNetDiscriminator, ResNetGenerator
from gandist.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

ARCHS = ("dcgan", "resnet", "stylegan2")


def build_models(
    arch: str,
    resolution: int,
    channels: int,
    z_dim: int,
    g_width: int,
    d_width: int,
    num_classes: int = 0,
    d_mbstd: int = 0,
) -> tuple[nn.Module, nn.Module]:
    """Return (G, D) for an architecture name; num_classes > 0 makes both class-conditional.

    d_mbstd > 0 adds a minibatch standard deviation layer (that group size) to the ResNet D.
    """
    if d_mbstd and arch != "resnet":
        raise ValueError(f"d_mbstd is an option of the resnet D (stylegan2's D always has one), not of {arch!r}")
    if arch == "dcgan":
        if num_classes:
            raise ValueError("the DCGAN is unconditional: use arch resnet or stylegan2 for num_classes > 0")
        return (
            Generator(resolution, z_dim=z_dim, width=g_width, channels=channels),
            Discriminator(resolution, width=d_width, channels=channels),
        )
    if arch == "resnet":
        return (
            ResNetGenerator(resolution, z_dim=z_dim, width=g_width, channels=channels, num_classes=num_classes),
            ResNetDiscriminator(
                resolution, width=d_width, channels=channels, num_classes=num_classes, mbstd_group=d_mbstd
            ),
        )
    if arch == "stylegan2":
        return (
            StyleGAN2Generator(resolution, z_dim=z_dim, width=g_width, channels=channels, num_classes=num_classes),
            StyleGAN2Discriminator(resolution, width=d_width, channels=channels, num_classes=num_classes),
        )
    raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")


__all__ = [
    "ARCHS",
    "Discriminator",
    "Generator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "build_models",
]
