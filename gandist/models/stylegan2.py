"""A compact StyleGAN2 (Karras et al. 2020): mapping network, modulated convolutions, noise inputs; residual D.

G: z (and a class embedding when conditional) -> mapping MLP -> w; a learned 4x4 constant goes
through synthesis blocks, each upsampling (bilinear) and applying two 3x3 convolutions whose
weights are modulated per sample by an affine map of w and demodulated (weight normalisation
per output channel), with per-pixel noise scaled by a learned strength. Each block adds its
toRGB output (a modulated 1x1 conv) to the upsampled image so far ("skip" G). All layers use
the equalised learning rate (weights N(0, 1), scaled at run time by 1/sqrt(fan_in)); the mapping
network trains 100x slower (lr multiplier 0.01). `w_avg` tracks the mean w for truncation.

D: fromRGB 1x1, residual blocks (two 3x3 convs then 2x2 average-pool down, a 1x1 shortcut, sum
scaled by 1/sqrt(2)) to 4x4, minibatch standard deviation, a 3x3 conv and two dense layers. When
conditional, the last layer outputs a vector that is projected on an embedding of c.

Compared to the paper this leaves out the FIR up/down-sampling filters (bilinear and average
pooling instead), style mixing, path length regularisation and the custom CUDA ops. Channels at
r x r are width * min(8, resolution / r) (the compact schedule), or StyleGAN2's own schedule
min(channel_base / r, channel_max) when channel_base > 0 (configs/stylegan2_*.yaml: the paper's
channel_base 16384 at 256 px and 32768 at 1024 px, channel_max 512). With `activation_checkpointing`
each synthesis and discriminator block is recomputed in the backward pass instead of keeping its
activations (layers.run_block). Parameter counts, z_dim = w_dim = 128, 2 mapping layers
(unconditional / 10 classes):

    resolution  width   G (1 ch)                  D (1 ch)
    32          64      5,088,587 / 5,106,379     9,055,681 / 9,323,456
    32          32      1,390,379 / 1,408,171     2,265,825 / 2,334,176
    64          64      10,006,862 / 10,024,654   14,037,441 / 14,305,216
    128         64      14,925,137 / 14,942,929   19,019,201 / 19,286,976
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from gandist.models.layers import minibatch_stddev, run_block

GAIN = math.sqrt(2.0)  # keeps activation magnitudes through leaky ReLU(0.2), as in StyleGAN


def channels_at(resolution: int, r: int, width: int, channel_base: int = 0, channel_max: int = 512) -> int:
    """Channels of the layers working at r x r px in a net for `resolution` px images: the compact schedule
    width * min(8, resolution / r), or StyleGAN2's min(channel_base / r, channel_max) when channel_base > 0."""
    if channel_base > 0:
        return max(1, min(channel_base // r, channel_max))
    return width * min(8, resolution // r)


def _num_blocks(resolution: int) -> int:
    if resolution < 8 or 2 ** int(math.log2(resolution)) != resolution:
        raise ValueError(f"StyleGAN2 resolution must be a power of two >= 8, got {resolution}")
    return int(math.log2(resolution)) - 1


def _check_labels(c: torch.Tensor | None, num_classes: int, who: str) -> None:
    if num_classes > 0 and c is None:
        raise ValueError(f"{who} is class-conditional ({num_classes} classes): pass class labels c")
    if num_classes == 0 and c is not None:
        raise ValueError(f"{who} is unconditional (num_classes=0) but was given class labels")


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit root-mean-square."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class EqualLinear(nn.Module):
    """Dense layer with the equalised learning rate; optional leaky ReLU (with gain sqrt 2)."""

    def __init__(self, in_f: int, out_f: int, bias_init: float = 0.0, lr_mul: float = 1.0, act: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_f, in_f) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_f,), float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_f)
        self.lr_mul, self.act = lr_mul, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the gain scales the output in place: a scaled copy of the weight would be one more copy of every
        # weight per forward (saved for the backward), which dominates the memory of wide low-resolution nets
        x = F.linear(x, self.weight).mul_(self.weight_gain).add_((self.bias * self.lr_mul).to(x.dtype))
        return F.leaky_relu(x, 0.2) * GAIN if self.act else x


class EqualConv2d(nn.Module):
    """Convolution with the equalised learning rate; optional leaky ReLU (with gain sqrt 2)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True, act: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_ch * kernel * kernel)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, padding=self.weight.shape[-1] // 2).mul_(self.weight_gain)  # see EqualLinear
        if self.bias is not None:
            x = x.add_(self.bias[None, :, None, None].to(x.dtype))
        return F.leaky_relu(x, 0.2) * GAIN if self.act else x


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per sample and input channel by styles from w.

    With `demodulate`, each output channel's modulated weights are renormalised to unit norm,
    which replaces AdaIN's instance normalisation without its droplet artefacts. The modulation is
    applied to the activations instead of the weights (StyleGAN2-ADA's non-fused path): inputs
    scaled by the styles (and the equalised-lr gain), one convolution with the shared weights,
    outputs scaled by the demodulation coefficients (s^2 . sum_k W^2)^-1/2, the same result as a
    grouped convolution with per-sample weights but without materialising those (n x out x in x k x k:
    at 4x4 px with 512 channels ~140x the activations).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, w_dim: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.weight_gain = 1 / math.sqrt(in_ch * kernel * kernel)
        self.demodulate, self.up = demodulate, up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # the equalised-lr gain goes with the styles: no weight copy
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = F.conv2d(x * styles[:, :, None, None].to(x.dtype), self.weight, padding=self.weight.shape[-1] // 2)
        if self.demodulate:  # |W_o . s|^2 = sum_i s_i^2 sum_k W_oik^2: one n x out matrix product
            at_least_fp32 = torch.promote_types(styles.dtype, torch.float32)  # fp32 under autocast
            energy = self.weight.to(at_least_fp32).square().sum(dim=(2, 3)).t()
            d = (styles.to(at_least_fp32).square() @ energy + 1e-8).rsqrt()
            x = x * d[:, :, None, None].to(x.dtype)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + per-pixel noise (learned strength) + bias + leaky ReLU."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, up=up)
        # shape (1,), not (): DeepSpeed's engines view every parameter as bytes, which a 0-d tensor refuses
        self.noise_strength = nn.Parameter(torch.zeros(1))
        self.register_load_state_dict_pre_hook(_scalar_noise_strength)
        self.bias = nn.Parameter(torch.zeros(out_ch))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = self.conv(x, w)
        noise = torch.randn(x.shape[0], 1, x.shape[2], x.shape[3], device=x.device, dtype=x.dtype)
        x = x + noise * self.noise_strength + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * GAIN


def _scalar_noise_strength(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before noise_strength had shape (1,) hold it as a 0-d tensor: reshape on load."""
    key = prefix + "noise_strength"
    if key in state_dict and state_dict[key].dim() == 0:
        state_dict[key] = state_dict[key].reshape(1)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to image channels (not demodulated) + bias."""

    def __init__(self, in_ch: int, channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network (4x4 starts from a learned constant)."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, channels: int, first: bool):
        super().__init__()
        self.first = first
        if first:
            self.const = nn.Parameter(torch.randn(out_ch, 4, 4))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(in_ch, out_ch, w_dim, up=True)
        self.conv1 = SynthesisLayer(out_ch, out_ch, w_dim)
        self.torgb = ToRGB(out_ch, channels, w_dim)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, w: torch.Tensor):
        if self.first:
            x = self.const[None].expand(w.shape[0], -1, -1, -1)
        else:
            x = self.conv0(x, w)
        x = self.conv1(x, w)
        rgb = self.torgb(x, w)
        if img is not None:
            rgb = rgb + F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
        return x, rgb


class MappingNetwork(nn.Module):
    """z (+ class embedding) -> w through an MLP with a 0.01 learning-rate multiplier."""

    def __init__(self, z_dim: int, w_dim: int, num_layers: int, num_classes: int, w_avg_beta: float = 0.995):
        super().__init__()
        self.num_classes, self.w_avg_beta = num_classes, w_avg_beta
        self.embed = EqualLinear(num_classes, w_dim) if num_classes > 0 else None
        in_f = z_dim + (w_dim if num_classes > 0 else 0)
        dims = [in_f] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *(EqualLinear(dims[i], dims[i + 1], lr_mul=0.01, act=True) for i in range(num_layers))
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0) -> torch.Tensor:
        x = normalize_2nd_moment(z.flatten(1))
        if self.embed is not None:
            onehot = F.one_hot(c, self.num_classes).to(x.dtype)
            x = torch.cat([x, normalize_2nd_moment(self.embed(onehot))], dim=1)
        w = self.layers(x)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation_psi)
        return w


class StyleGAN2Generator(nn.Module):
    """z (and class labels c when conditional) -> image (about [-1, 1]; not squashed, as in StyleGAN)."""

    activation_checkpointing = False
    """Recompute each synthesis block in the backward pass instead of keeping its activations."""

    def __init__(
        self,
        resolution: int = 32,
        z_dim: int = 128,
        width: int = 64,
        channels: int = 3,
        num_classes: int = 0,
        w_dim: int | None = None,
        mapping_layers: int = 2,
        channel_base: int = 0,
        channel_max: int = 512,
    ):
        super().__init__()
        self.resolution, self.z_dim, self.channels, self.num_classes = resolution, z_dim, channels, num_classes
        w_dim = w_dim or z_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, num_classes)
        res = [4 * 2**i for i in range(_num_blocks(resolution))]
        ch = partial(channels_at, resolution, width=width, channel_base=channel_base, channel_max=channel_max)
        self.blocks = nn.ModuleList(SynthesisBlock(ch(max(r // 2, 4)), ch(r), w_dim, channels, r == 4) for r in res)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0) -> torch.Tensor:
        _check_labels(c, self.num_classes, "StyleGAN2Generator")
        w = self.mapping(z, c, truncation_psi)
        x = img = None
        for block in self.blocks:
            x, img = run_block(block, [block], x, img, w, checkpointed=self.activation_checkpointing)
        return img


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs then 2x average-pool, plus a pooled 1x1 shortcut; the sum scaled by 1/sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(self.conv1(self.conv0(x)), 2)
        return (x + skip) * math.sqrt(0.5)


class StyleGAN2Discriminator(nn.Module):
    """image (and class labels c when conditional) -> one logit per image (N x 1)."""

    activation_checkpointing = False
    """Recompute each discriminator block in the backward pass instead of keeping its activations."""

    def __init__(
        self,
        resolution: int = 32,
        width: int = 64,
        channels: int = 3,
        num_classes: int = 0,
        channel_base: int = 0,
        channel_max: int = 512,
    ):
        super().__init__()
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        n_down = _num_blocks(resolution) - 1
        at = partial(channels_at, resolution, width=width, channel_base=channel_base, channel_max=channel_max)
        self.from_rgb = EqualConv2d(channels, at(resolution), 1)
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(at(resolution // 2**i), at(resolution // 2 ** (i + 1))) for i in range(n_down))
        )
        ch = at(4)
        self.conv = EqualConv2d(ch + 1, ch, 3)
        self.fc = EqualLinear(ch * 16, ch, act=True)
        self.cmap_dim = ch if num_classes > 0 else 1
        self.out = EqualLinear(ch, self.cmap_dim)
        self.embed = EqualLinear(num_classes, self.cmap_dim) if num_classes > 0 else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        _check_labels(c, self.num_classes, "StyleGAN2Discriminator")
        x = self.from_rgb(x)
        for block in self.blocks:
            x = run_block(block, [block], x, checkpointed=self.activation_checkpointing)
        x = self.conv(minibatch_stddev(x))
        x = self.out(self.fc(x.flatten(1)))
        if self.embed is not None:
            cmap = self.embed(F.one_hot(c, self.num_classes).to(x.dtype))
            x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(self.cmap_dim)
        return x
