"""Image grids: tensors in [-1, 1] to a PNG tiling (no torchvision needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gandist.files import atomic_write


def make_grid(images: torch.Tensor, rows: int | None = None, pad: int = 2) -> np.ndarray:
    """N x C x H x W floats in [-1, 1] (or uint8) -> H' x W' (x 3) uint8 tiling, `rows` rows."""
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = images.shape
    rows = rows or max(1, int(math.sqrt(n)))
    cols = math.ceil(n / rows)
    grid = torch.zeros(c, rows * (h + pad) + pad, cols * (w + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    array = grid.permute(1, 2, 0).numpy()
    return array[:, :, 0] if c == 1 else array


def save_grid(images: torch.Tensor, path: str | Path, rows: int | None = None) -> Path:
    """Write a grid PNG atomically and return its path."""
    grid = Image.fromarray(make_grid(images, rows))
    return atomic_write(path, lambda tmp: grid.save(tmp, format="PNG"))
