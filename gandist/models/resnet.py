"""ResNet GAN with spectral normalisation (Miyato et al. 2018, SNGAN; Brock et al. 2019, BigGAN style).

G: z -> linear -> 4x4 -> residual up-blocks (BN-ReLU-up-conv3-BN-ReLU-conv3, 1x1 up shortcut)
-> BN-ReLU-conv3 -> Tanh. With `num_classes > 0` every BatchNorm is conditional: its scale and
shift come from a per-class embedding (de Vries et al. 2017), so G(z, c) draws class c. With
`shared_dim > 0`, BigGAN's hierarchical z and shared embedding instead: z is split into one chunk for
the linear layer and one per block, and each block's BatchNorms take their scale and shift linearly
from [a class embedding of size shared_dim shared by all blocks, the block's chunk of z], so z
reaches every resolution directly.

D: residual down-blocks to 4x4 (the first one "optimised": conv before ReLU), ReLU, global sum
pooling, a linear logit; every conv and linear layer is spectrally normalised (largest singular
value kept near 1 by one power iteration per training forward). With `num_classes > 0` a
projection head adds <embed(c), h> to the logit (Miyato & Koyama 2018). With `mbstd_group` > 0
the 4x4 features get StyleGAN's minibatch standard deviation channel and one more 3x3 conv: D then
sees how varied a batch is (its BatchNorm gives DCGAN's D the same signal; an SN ResNet D without
it lets a conditional G settle on few samples per class: precision high, recall low).

Channels at resolution r are width * min(8, resolution / r): 8*width at 4x4 for 32 px images,
width at the image resolution. Parameter counts, z_dim 100 (unconditional / 10 classes):

    resolution  width   G (1 ch)                  D (1 ch)
    32          64      3,326,593 / 3,350,785     1,185,985 / 1,188,545
    32          32      1,039,681 / 1,051,777     297,057 / 298,337
    64          64      8,310,913 / 8,353,537     4,857,793 / 4,862,913
    128         64      13,295,233 / 13,356,289   9,840,065 / 9,845,185
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from gandist.models.layers import minibatch_stddev, run_block


def channels_at(resolution: int, r: int, width: int) -> int:
    """Channels of the layers working at r x r px in a net for `resolution` px images."""
    return width * min(8, resolution // r)


def _num_blocks(resolution: int) -> int:
    if resolution < 8 or 2 ** int(math.log2(resolution)) != resolution:
        raise ValueError(f"ResNet GAN resolution must be a power of two >= 8, got {resolution}")
    return int(math.log2(resolution)) - 2


def _check_labels(c: torch.Tensor | None, num_classes: int, who: str) -> None:
    if num_classes > 0 and c is None:
        raise ValueError(f"{who} is class-conditional ({num_classes} classes): pass class labels c")
    if num_classes == 0 and c is not None:
        raise ValueError(f"{who} is unconditional (num_classes=0) but was given class labels")


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up per class (plain affine BatchNorm when num_classes=0)."""

    def __init__(self, channels: int, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(channels, affine=num_classes == 0)
        if num_classes > 0:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.bn(x)
        if self.num_classes > 0:
            h = h * self.gain(c)[:, :, None, None] + self.bias(c)[:, :, None, None]
        return h


class LinearConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are linear in a vector y (BigGAN: [shared class embedding, a chunk of z]);
    it starts as plain BatchNorm (scale 1, shift 0) and learns how much y moves them."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels)
        self.bias = nn.Linear(cond_dim, channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]


def _g_norm(channels: int, num_classes: int, cond_dim: int) -> nn.Module:
    if cond_dim:
        return LinearConditionalBatchNorm2d(channels, cond_dim)
    return ConditionalBatchNorm2d(channels, num_classes)


class GBlock(nn.Module):
    """Residual block that doubles the resolution; its BatchNorms read class labels, or a vector (cond_dim > 0)."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, cond_dim: int = 0):
        super().__init__()
        self.bn1 = _g_norm(in_ch, num_classes, cond_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.bn2 = _g_norm(out_ch, num_classes, cond_dim)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1, 1, 0)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, cond)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(nn.Module):
    """z (and class labels c when conditional) -> image in [-1, 1]."""

    activation_checkpointing = False
    """Recompute each residual block in the backward pass instead of keeping its activations."""

    def __init__(
        self,
        resolution: int = 32,
        z_dim: int = 128,
        width: int = 64,
        channels: int = 3,
        num_classes: int = 0,
        shared_dim: int = 0,
    ):
        super().__init__()
        self.resolution, self.z_dim, self.channels, self.num_classes = resolution, z_dim, channels, num_classes
        n_up = _num_blocks(resolution)
        self.top_ch = channels_at(resolution, 4, width)
        # BigGAN's hierarchical z (shared_dim > 0): z is split into a chunk for the first layer and one for each
        # block, whose BatchNorms read [a class embedding shared by every block, the block's chunk]
        n_chunks = n_up + 1 if shared_dim else 1
        self.chunks = [z_dim - (n_chunks - 1) * (z_dim // n_chunks)] + [z_dim // n_chunks] * (n_chunks - 1)
        self.shared = nn.Embedding(num_classes, shared_dim) if shared_dim and num_classes else None
        cond_dim = self.chunks[-1] + (shared_dim if num_classes else 0) if shared_dim else 0
        self.linear = nn.Linear(self.chunks[0], 4 * 4 * self.top_ch)
        self.blocks = nn.ModuleList(
            GBlock(
                channels_at(resolution, 4 * 2**i, width),
                channels_at(resolution, 8 * 2**i, width),
                num_classes,
                cond_dim,
            )
            for i in range(n_up)
        )
        last = channels_at(resolution, resolution, width)
        self.bn = nn.BatchNorm2d(last)
        self.to_image = nn.Conv2d(last, channels, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, LinearConditionalBatchNorm2d):
                nn.init.zeros_(m.gain.weight)
                nn.init.zeros_(m.bias.weight)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(c, self.num_classes, "ResNetGenerator")
        zs = z.flatten(1).split(self.chunks, dim=1)
        h = self.linear(zs[0]).view(z.shape[0], self.top_ch, 4, 4)
        shared = None if self.shared is None else self.shared(c)
        for i, block in enumerate(self.blocks):
            if len(zs) == 1:
                cond = c
            else:
                cond = zs[i + 1] if shared is None else torch.cat([shared, zs[i + 1]], dim=1)
            h = run_block(block, [block], h, cond, checkpointed=self.activation_checkpointing)
        return torch.tanh(self.to_image(F.relu(self.bn(h))))


class DBlock(nn.Module):
    """Residual block that halves the resolution; `first` applies the conv before any ReLU."""

    def __init__(self, in_ch: int, out_ch: int, first: bool, sn=spectral_norm):
        super().__init__()
        self.first = first
        self.conv1 = sn(nn.Conv2d(in_ch, out_ch, 3, 1, 1))
        self.conv2 = sn(nn.Conv2d(out_ch, out_ch, 3, 1, 1))
        self.shortcut = sn(nn.Conv2d(in_ch, out_ch, 1, 1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        if self.first:  # pool first: the 1x1 conv then runs on a quarter of the pixels (SNGAN's optimised block)
            return h + self.shortcut(F.avg_pool2d(x, 2))
        return h + F.avg_pool2d(self.shortcut(x), 2)


class ResNetDiscriminator(nn.Module):
    """image (and class labels c when conditional) -> one logit per image (N x 1)."""

    activation_checkpointing = False
    """Recompute each residual block in the backward pass instead of keeping its activations."""

    def __init__(
        self,
        resolution: int = 32,
        width: int = 64,
        channels: int = 3,
        num_classes: int = 0,
        mbstd_group: int = 0,
        spectral: bool = True,
    ):
        super().__init__()
        sn = spectral_norm if spectral else (lambda layer: layer)  # plain layers: smoothness from R1 instead
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        self.mbstd_group = mbstd_group
        n_down = _num_blocks(resolution)
        chans = [channels] + [channels_at(resolution, resolution // 2**i, width) for i in range(n_down)]
        self.blocks = nn.Sequential(*(DBlock(chans[i], chans[i + 1], i == 0, sn) for i in range(n_down)))
        self.mbstd_conv = sn(nn.Conv2d(chans[-1] + 1, chans[-1], 3, 1, 1)) if mbstd_group > 0 else None
        self.linear = sn(nn.Linear(chans[-1], 1))
        self.embed = sn(nn.Embedding(num_classes, chans[-1])) if num_classes > 0 else None
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
                weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
                nn.init.xavier_uniform_(weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, c: torch.Tensor | None = None, classes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """N x 1 logits; with `classes` (conditional D only) also N x num_classes class logits <embed(k), h>.

        The class logits read the projection head as a classifier over every class (dual projection,
        Han et al. 2021): a cross-entropy on them asks the features of class c to score higher for c than
        for the other classes, which the projection term alone (<embed(c), h> only) never does.
        """
        _check_labels(c, self.num_classes, "ResNetDiscriminator")
        if classes and self.embed is None:
            raise ValueError("ResNetDiscriminator: class logits need a class-conditional D (num_classes > 0)")
        for block in self.blocks:
            x = run_block(block, [block], x, checkpointed=self.activation_checkpointing)
        h = F.relu(x)
        if self.mbstd_conv is not None:
            h = F.relu(self.mbstd_conv(minibatch_stddev(h, self.mbstd_group)))
        h = h.sum(dim=(2, 3))
        logit = self.linear(h)
        if classes:  # the embedding module is called (not its weight read): ZeRO-3 gathers it on that call
            class_logits = h @ self.embed(torch.arange(self.num_classes, device=h.device)).T
            return logit + class_logits.gather(1, c[:, None]), class_logits
        if self.embed is not None:
            logit = logit + (self.embed(c) * h).sum(dim=1, keepdim=True)
        return logit
