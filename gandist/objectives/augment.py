"""Differentiable augmentation of every image D sees, real and fake alike, on the device. Pure torch.

Two families, usable together (DiffAugment first):

- DiffAugment (Zhao et al. 2020): `color` (brightness, saturation, contrast), `translation` (up to
  1/8 of the image, zero fill) and `cutout` (a zeroed square of half the image side), each
  applied to every image with fresh random parameters.
- Adaptive augmentation (ADA, Karras et al. 2020): each op of the pipeline (`xflip`, `rotate90`,
  `translate`, `scale`, `rotate`, `brightness`, `contrast`, `saturation`, `cutout`) is applied to
  each image with probability p. p is steered by the overfitting heuristic
  r_t = E[sign(D(real))]: every few steps p moves up if r_t exceeds the target (0.6 in the
  paper) and down otherwise, by (images since the last adjustment) / (speed_kimg * 1000), so p
  can travel from 0 to 1 in speed_kimg thousand images.

All ops are differentiable in the images (G is trained through them). Random numbers come from
the global generator of the images' device: seed it per rank. p and the sign statistics stay on
the device (no host sync per step); `state_dict` holds them for checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

DIFFAUGMENT_OPS = ("color", "translation", "cutout")
ADA_OPS = ("xflip", "rotate90", "translate", "scale", "rotate", "brightness", "contrast", "saturation", "cutout")


def _per_sample(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def _mirror(index: torch.Tensor, size: int) -> torch.Tensor:
    """Fold indices outside [0, size) back inside by mirroring at the edges (size >= 2)."""
    period = 2 * size - 2
    index = index % period
    return torch.where(index < size, index, period - index)


def _shift(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, reflect: bool) -> torch.Tensor:
    """Translate each image by integer (tx, ty) pixels; fill with zeros or by mirroring."""
    n, _, h, w = x.shape
    iy = torch.arange(h, device=x.device)[None, :] - ty[:, None]
    ix = torch.arange(w, device=x.device)[None, :] - tx[:, None]
    if reflect:
        iy, ix = _mirror(iy, h), _mirror(ix, w)
        out = x[torch.arange(n, device=x.device)[:, None, None], :, iy[:, :, None], ix[:, None, :]]
        return out.permute(0, 3, 1, 2)
    valid = ((iy >= 0) & (iy < h))[:, :, None] & ((ix >= 0) & (ix < w))[:, None, :]
    out = x[
        torch.arange(n, device=x.device)[:, None, None],
        :,
        iy.clamp(0, h - 1)[:, :, None],
        ix.clamp(0, w - 1)[:, None, :],
    ]
    return out.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)


def _cutout_mask(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """1 outside and 0 inside a square of side ratio * size at a random centre, per image."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (n, 1), device=x.device)
    cx = torch.randint(0, w, (n, 1), device=x.device)
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    inside_y = (ys >= cy - size_y // 2) & (ys < cy - size_y // 2 + size_y)
    inside_x = (xs >= cx - size_x // 2) & (xs < cx - size_x // 2 + size_x)
    return (~(inside_y[:, :, None] & inside_x[:, None, :]))[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policy: Sequence[str]) -> torch.Tensor:
    """DiffAugment of a batch in [-1, 1]: ops from DIFFAUGMENT_OPS in the given order."""
    for op in policy:
        if op == "color":
            x = x + (torch.rand(_per_sample(x), device=x.device, dtype=x.dtype) - 0.5)
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * (torch.rand(_per_sample(x), device=x.device, dtype=x.dtype) * 2) + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * (torch.rand(_per_sample(x), device=x.device, dtype=x.dtype) + 0.5) + mean
        elif op == "translation":
            n, _, h, w = x.shape
            sy, sx = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
            ty = torch.randint(-sy, sy + 1, (n,), device=x.device)
            tx = torch.randint(-sx, sx + 1, (n,), device=x.device)
            x = _shift(x, tx, ty, reflect=False)
        elif op == "cutout":
            x = x * _cutout_mask(x, 0.5)
        else:
            raise ValueError(f"unknown DiffAugment op {op!r} (known: {', '.join(DIFFAUGMENT_OPS)})")
    return x


def _choose(where: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image: a where `where` (shape N) is true, else b."""
    return torch.where(where.view(_per_sample(a)), a, b)


def ada_augment(x: torch.Tensor, ops: Sequence[str], p: torch.Tensor) -> torch.Tensor:
    """Apply each op of ADA_OPS in `ops` to each image with probability p (a 0-d tensor)."""
    n, c, h, w = x.shape
    dev = x.device

    def chosen() -> torch.Tensor:
        return torch.rand(n, device=dev) < p

    theta = None  # scale and rotate are gathered into one resampling
    for op in ops:
        if op == "xflip":
            x = _choose(chosen(), x.flip(3), x)
        elif op == "rotate90":
            k = torch.randint(0, 4, (n,), device=dev) * chosen()
            for quarter in (1, 2, 3):
                x = _choose(k == quarter, x.rot90(quarter, dims=(2, 3)), x)
        elif op == "translate":
            on = chosen()
            ty = ((torch.rand(n, device=dev) * 2 - 1) * 0.125 * h).round().long() * on
            tx = ((torch.rand(n, device=dev) * 2 - 1) * 0.125 * w).round().long() * on
            x = _shift(x, tx, ty, reflect=True)
        elif op in ("scale", "rotate"):
            if theta is None:
                theta = torch.eye(2, device=dev).repeat(n, 1, 1)
            if op == "scale":
                s = torch.exp2(torch.randn(n, device=dev) * 0.2)
                s = torch.where(chosen(), s, torch.ones_like(s))
                theta = theta / s[:, None, None]
            else:
                angle = (torch.rand(n, device=dev) * 2 - 1) * math.pi * chosen()
                cos, sin = angle.cos(), angle.sin()
                rot = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
                theta = rot @ theta
        elif op == "brightness":
            x = x + (torch.randn(_per_sample(x), device=dev) * 0.2 * chosen().view(_per_sample(x))).to(x.dtype)
        elif op == "contrast":
            factor = torch.exp2(torch.randn(n, device=dev) * 0.5)
            factor = torch.where(chosen(), factor, torch.ones_like(factor)).view(_per_sample(x)).to(x.dtype)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * factor + mean
        elif op == "saturation":
            if c > 1:
                factor = torch.exp2(torch.randn(n, device=dev))
                factor = torch.where(chosen(), factor, torch.ones_like(factor)).view(_per_sample(x)).to(x.dtype)
                mean = x.mean(dim=1, keepdim=True)
                x = (x - mean) * factor + mean
        elif op == "cutout":
            x = _choose(chosen(), x * _cutout_mask(x, 0.5), x)
        else:
            raise ValueError(f"unknown ADA op {op!r} (known: {', '.join(ADA_OPS)})")
    if theta is not None:
        affine = torch.cat([theta, torch.zeros(n, 2, 1, device=dev)], dim=2).to(x.dtype)
        grid = F.affine_grid(affine, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x


class AugmentPipe:
    """DiffAugment and/or adaptive augmentation with its probability p and statistics."""

    def __init__(
        self,
        diffaugment: Sequence[str] = (),
        ada_ops: Sequence[str] = (),
        p: float = 0.0,
        target: float = 0.6,
        speed_kimg: float = 100.0,
        device: torch.device | str = "cpu",
    ):
        for op in diffaugment:
            if op not in DIFFAUGMENT_OPS:
                raise ValueError(f"unknown DiffAugment op {op!r} (known: {', '.join(DIFFAUGMENT_OPS)})")
        for op in ada_ops:
            if op not in ADA_OPS:
                raise ValueError(f"unknown ADA op {op!r} (known: {', '.join(ADA_OPS)})")
        self.diffaugment, self.ada_ops = list(diffaugment), list(ada_ops)
        self.target, self.speed_kimg = target, speed_kimg
        self.p = torch.tensor(float(p), device=device)
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(real)), count

    @property
    def enabled(self) -> bool:
        """Whether this pipe changes images at all."""
        return bool(self.diffaugment or self.ada_ops)

    @property
    def adaptive(self) -> bool:
        """Whether p is steered by D's outputs on reals (target > 0 and ADA ops given)."""
        return bool(self.ada_ops) and self.target > 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a batch (real or fake) in [-1, 1]."""
        if self.diffaugment:
            images = diff_augment(images, self.diffaugment)
        if self.ada_ops:
            images = ada_augment(images, self.ada_ops, self.p)
        return images

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) for the next adjustment of p."""
        if self.adaptive:
            logits = real_logits.detach().float()
            count = torch.full((), float(logits.numel()), device=logits.device)  # a fill: no host-to-device copy
            self.signs += torch.stack([logits.sign().sum(), count])

    def adjust(
        self, nimg_since: int, reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    ) -> torch.Tensor:
        """Move p after `nimg_since` images; `reduce_mean` averages the statistics over ranks. Returns r_t."""
        signs = reduce_mean(self.signs)
        rt = signs[0] / signs[1].clamp(min=1.0)
        if self.adaptive:
            step = torch.sign(rt - self.target) * (nimg_since / (self.speed_kimg * 1000))
            self.p.copy_(torch.where(signs[1] > 0, self.p + step, self.p).clamp(0.0, 1.0))
        self.signs.zero_()
        return rt

    def state_dict(self) -> dict[str, torch.Tensor]:
        """p and the pending statistics, for checkpoints."""
        return {"p": self.p.clone(), "signs": self.signs.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what state_dict returned."""
        self.p.copy_(state["p"])
        self.signs.copy_(state["signs"])
