"""The one model builder: G and D (or G alone) from the `model` config section.

Used by the training loop, the generator tools (sample, generate, export, load_generator), `gandist
evaluate` and the benchmarks, so that a checkpoint's config always rebuilds the nets that wrote it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from gandist.models.dcgan import Discriminator, Generator
from gandist.models.resnet import ResNetDiscriminator, ResNetGenerator
from gandist.models.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator

if TYPE_CHECKING:  # the config is read by attribute only: models stay free of gandist's other layers
    from gandist.config import ModelConfig

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
    g_shared_dim: int = 0,
    channel_base: int = 0,
    channel_max: int = 512,
    mapping_layers: int = 2,
    d_spectral_norm: bool = True,
) -> tuple[nn.Module, nn.Module]:
    """Return (G, D) for an architecture name; num_classes > 0 makes both class-conditional.

    d_mbstd > 0 adds a minibatch standard deviation layer (that group size) to the ResNet D; g_shared_dim > 0
    gives the ResNet G BigGAN's hierarchical z and shared class embedding (of that size); d_spectral_norm=False
    leaves the ResNet D's layers plain; channel_base, channel_max and mapping_layers shape the StyleGAN2. Which
    combinations make sense is the model config's business (ModelConfig.validate).
    """
    if arch == "dcgan":
        return (
            Generator(resolution, z_dim=z_dim, width=g_width, channels=channels),
            Discriminator(resolution, width=d_width, channels=channels),
        )
    if arch == "resnet":
        return (
            ResNetGenerator(
                resolution,
                z_dim=z_dim,
                width=g_width,
                channels=channels,
                num_classes=num_classes,
                shared_dim=g_shared_dim,
            ),
            ResNetDiscriminator(
                resolution,
                width=d_width,
                channels=channels,
                num_classes=num_classes,
                mbstd_group=d_mbstd,
                spectral=d_spectral_norm,
            ),
        )
    if arch == "stylegan2":
        schedule = {"channel_base": channel_base, "channel_max": channel_max}
        return (
            StyleGAN2Generator(
                resolution,
                z_dim=z_dim,
                width=g_width,
                channels=channels,
                num_classes=num_classes,
                mapping_layers=mapping_layers,
                **schedule,
            ),
            StyleGAN2Discriminator(resolution, width=d_width, channels=channels, num_classes=num_classes, **schedule),
        )
    raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")


def build_nets(model: ModelConfig, seed: int) -> tuple[nn.Module, nn.Module]:
    """G and D of the model config, initialised from `seed`: identical weights on every rank.

    Seeds torch's global generator (the training loop re-seeds it per rank afterwards).
    """
    torch.manual_seed(seed)
    m = model
    nets = build_models(
        m.arch,
        m.resolution,
        m.channels,
        m.z_dim,
        m.g_width,
        m.d_width,
        num_classes=m.num_classes,
        d_mbstd=m.d_mbstd,
        g_shared_dim=m.g_shared_dim,
        channel_base=m.channel_base,
        channel_max=m.channel_max,
        mapping_layers=m.mapping_layers,
        d_spectral_norm=m.d_spectral_norm,
    )
    for net in nets:
        net.activation_checkpointing = m.activation_checkpointing
    return nets


def build_generator(model: ModelConfig) -> nn.Module:
    """An untrained G of the model config (to load weights into), leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        G, _ = build_nets(model, seed=0)
    return G
