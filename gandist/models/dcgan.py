"""The standard DCGAN of Radford et al. (2015), for 32, 64 and 128 px images.

G maps z (a `z_dim` vector, shaped N x z_dim x 1 x 1 or N x z_dim) through 4x4 transposed
convolutions with BatchNorm + ReLU to a Tanh image in [-1, 1]; D mirrors it with strided
convolutions, BatchNorm (not on the first layer) and LeakyReLU(0.2), ending in one logit per
image. With width 64 and 3 channels the layers, and so the parameter counts, are exactly those
of the speed reference `benchmarks/reference/plain_gan.py`:

    resolution   G (3 ch)     D (3 ch)     G (1 ch)     D (1 ch)
    32            1,068,928      663,296    1,066,880      661,248
    64            3,576,704    2,765,568    3,574,656    2,763,520
    128          12,786,560   11,164,416   12,784,512   11,162,368
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gandist.models.layers import run_sequential


def _num_scalings(resolution: int) -> int:
    if resolution < 8 or 2 ** int(math.log2(resolution)) != resolution:
        raise ValueError(f"DCGAN resolution must be a power of two >= 8, got {resolution}")
    return int(math.log2(resolution)) - 3


class Generator(nn.Module):
    """z -> image. Accepts z as N x z_dim or N x z_dim x 1 x 1."""

    activation_checkpointing = False
    """Recompute each conv-BatchNorm-ReLU layer in the backward pass instead of keeping its activations."""

    def __init__(self, resolution: int = 64, z_dim: int = 100, width: int = 64, channels: int = 3):
        super().__init__()
        self.resolution, self.z_dim, self.channels = resolution, z_dim, channels
        n_up = _num_scalings(resolution)
        ch = width * 2**n_up
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        _unconditional(c)
        if z.dim() == 2:
            z = z[:, :, None, None]
        return run_sequential(self.main, z, _layer_ends(self.main), self.activation_checkpointing)


class Discriminator(nn.Module):
    """image -> one real/fake logit per image (shape N x 1)."""

    activation_checkpointing = False
    """Recompute each conv-BatchNorm-LeakyReLU layer in the backward pass instead of keeping its activations."""

    def __init__(self, resolution: int = 64, width: int = 64, channels: int = 3):
        super().__init__()
        self.resolution, self.channels = resolution, channels
        n_down = _num_scalings(resolution)
        ch = width
        layers: list[nn.Module] = [nn.Conv2d(channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False), nn.Flatten()]
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        _unconditional(c)
        return run_sequential(self.main, x, _layer_ends(self.main), self.activation_checkpointing)


def _layer_ends(main: nn.Sequential) -> list[int]:
    """Indices of the activations that end each layer (the checkpointed segments)."""
    return [i for i, m in enumerate(main) if isinstance(m, (nn.ReLU, nn.LeakyReLU))]


def _unconditional(c: torch.Tensor | None) -> None:
    if c is not None:  # the loop passes c=None for unconditional models; labels here are a wiring error
        raise ValueError("the DCGAN is unconditional but was given class labels")


def init_weights(m: nn.Module) -> None:
    """DCGAN initialisation: conv weights ~ N(0, 0.02), BatchNorm scale ~ N(1, 0.02), shift 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
