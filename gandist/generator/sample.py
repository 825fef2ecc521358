"""Sampling a trained generator: reproducible noise, labels, images, grids and latent walks.

    sample index i, seed  --latents-->  z_i  (depends on (seed, i) only, never on batch or rank)
    z, labels  --render-->  images in [-1, 1]  --to_uint8-->  what grids and shards hold

Class-conditional generators are called `G(z, labels)` with int64 class ids; unconditional ones `G(z)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from gandist.files import atomic_write
from gandist.generator.load import SamplingError, TrainedGenerator
from gandist.reporting.grids import make_grid, save_grid

# ----------------------------------------------------------------------------------------------
# Noise and labels, as functions of (seed, sample index).


def latents(seed: int, indices: Sequence[int] | range, z_dim: int, truncation: float | None = None) -> torch.Tensor:
    """z for the given sample indices (float32, len(indices) x z_dim): row k depends on (seed, indices[k]) only.

    Each sample has its own counter-based stream (Philox keyed by the seed, counter block by the
    index), so a sample's noise is the same whichever batch, shard or rank draws it. With
    `truncation` psi, components with |z| > psi are redrawn from the same stream until all lie
    within [-psi, psi] (BigGAN's truncation trick by resampling: a truncated normal, not a clamp).
    """
    if truncation is not None and not truncation > 0:
        raise SamplingError(f"truncation psi must be > 0, got {truncation}")
    out = np.empty((len(indices), z_dim), dtype=np.float32)
    for row, index in enumerate(indices):
        if index < 0:
            raise SamplingError(f"sample index must be >= 0, got {index}")
        rng = np.random.Generator(np.random.Philox(key=seed & (2**64 - 1), counter=[0, 0, int(index), 0]))
        z = rng.standard_normal(z_dim, dtype=np.float32)
        if truncation is not None:
            outside = np.abs(z) > truncation
            while outside.any():
                z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
                outside = np.abs(z) > truncation
        out[row] = z
    return torch.from_numpy(out)


def check_class_options(classes: int, class_id: int | None, balanced: bool) -> None:
    """Refuse class options that do not fit the model (classes = 0: unconditional)."""
    if class_id is not None and balanced:
        raise SamplingError("--class and --class-balanced exclude each other: pick one")
    if classes == 0:
        if class_id is not None or balanced:
            option = f"--class {class_id}" if class_id is not None else "--class-balanced"
            raise SamplingError(f"{option}: the model is unconditional (it has no classes); drop the option")
        return
    if class_id is None and not balanced:
        raise SamplingError(
            f"the model is conditioned on {classes} classes: pass --class C (0 <= C < {classes}) or --class-balanced"
        )
    if class_id is not None and not 0 <= class_id < classes:
        raise SamplingError(f"--class {class_id} is out of range: the model has classes 0 to {classes - 1}")


def labels_for(
    indices: Sequence[int] | range, classes: int, class_id: int | None = None, balanced: bool = False
) -> torch.Tensor | None:
    """Class ids (int64) of the given sample indices, or None for an unconditional model.

    One class: all the same. Balanced: sample i gets class i mod classes, so any N samples hold
    every class floor(N / classes) or ceil(N / classes) times, whatever the split across ranks.
    """
    check_class_options(classes, class_id, balanced)
    if classes == 0:
        return None
    if class_id is not None:
        return torch.full((len(indices),), class_id, dtype=torch.int64)
    return torch.as_tensor(list(indices), dtype=torch.int64) % classes


# ----------------------------------------------------------------------------------------------
# Running the generator.


@torch.no_grad()
def render(G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Images in [-1, 1] (N x C x H x W, float32, on G's device) for latents and optional class ids."""
    device = next(G.parameters()).device
    z = z.to(device)
    images = G(z) if labels is None else G(z, labels.to(device))
    return images.float()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255] on the CPU, rounded as the trainer's grids round them."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def render_indices(
    tg: TrainedGenerator,
    indices: Sequence[int] | range,
    seed: int,
    truncation: float | None = None,
    class_id: int | None = None,
    balanced: bool = False,
    batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(images in [-1, 1] on the CPU, labels or None) for sample indices, generated in batches of `batch`."""
    if batch < 1:
        raise SamplingError(f"--batch must be >= 1, got {batch}")
    labels = labels_for(indices, tg.num_classes, class_id, balanced)
    chunks = []
    for start in range(0, len(indices), batch):
        part = indices[start : start + batch]
        z = latents(seed, part, tg.z_dim, truncation)
        chunks.append(render(tg.G, z, None if labels is None else labels[start : start + batch]).cpu())
    return torch.cat(chunks), labels


def render_batched(G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, batch: int = 64) -> torch.Tensor:
    """`render` in forward passes of at most `batch` images; the result on the CPU."""
    parts = [
        render(G, z[start : start + batch], None if labels is None else labels[start : start + batch]).cpu()
        for start in range(0, len(z), batch)
    ]
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------
# Interpolation.


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between rows of a and b at fraction t (t=0: a, t=1: b).

    For Gaussian z a straight line passes through low-norm points that G rarely saw; the great
    circle keeps the norm (when |a| = |b|) typical. Nearly parallel vectors fall back to lerp.
    """
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    a_unit = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b_unit = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cos = (a_unit * b_unit).sum(-1, keepdim=True).clamp(-1, 1)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-6
    safe_sin = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / safe_sin)
    wb = torch.where(near, t.expand_as(sin), torch.sin(t * theta) / safe_sin)
    return wa * a + wb * b


def lerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Linear interpolation between a and b at fraction t."""
    return a + (b - a) * t


def interpolation_latents(
    seed: int, paths: int, steps: int, z_dim: int, mode: str = "slerp", truncation: float | None = None
) -> torch.Tensor:
    """paths x steps x z_dim latents: path p goes from z of sample 2p to z of sample 2p+1 (endpoints included)."""
    if steps < 2:
        raise SamplingError(f"--steps must be >= 2 (the two endpoints), got {steps}")
    if paths < 1:
        raise SamplingError(f"--paths must be >= 1, got {paths}")
    mix = {"slerp": slerp, "lerp": lerp}.get(mode)
    if mix is None:
        raise SamplingError(f"--mode {mode!r} is not one of slerp, lerp")
    ends = latents(seed, range(2 * paths), z_dim, truncation)
    a, b = ends[0::2], ends[1::2]
    return torch.stack([mix(a, b, step / (steps - 1)) for step in range(steps)], dim=1)


def square_rows(n: int) -> int:
    """Rows of the most nearly square grid of n tiles (as the trainer's grids)."""
    return max(1, int(math.sqrt(n)))


# ----------------------------------------------------------------------------------------------
# Files: grids and animations.


def check_out_path(out: str | Path, allowed: Sequence[str], option: str = "--out") -> Path:
    """The output path if its extension is one of `allowed` (e.g. ('.png', '.gif')), else a clear error."""
    out = Path(out)
    if out.suffix.lower() not in allowed:
        raise SamplingError(f"{option} {out}: the extension must be one of {', '.join(allowed)}")
    return out


def write_sample_grid(
    tg: TrainedGenerator,
    out: str | Path,
    n: int = 64,
    seed: int = 0,
    truncation: float | None = None,
    class_id: int | None = None,
    balanced: bool = False,
    batch: int = 64,
) -> Path:
    """A PNG grid of samples 0 .. n-1 of `seed` (the same images `generate` writes for those keys)."""
    out = check_out_path(out, (".png",))
    if n < 1:
        raise SamplingError(f"--n must be >= 1, got {n}")
    images, _ = render_indices(tg, range(n), seed, truncation, class_id, balanced, batch)
    return save_grid(images, out, rows=square_rows(n))


def write_interpolation(
    tg: TrainedGenerator,
    out: str | Path,
    paths: int = 4,
    steps: int = 8,
    seed: int = 0,
    mode: str = "slerp",
    truncation: float | None = None,
    class_id: int | None = None,
    balanced: bool = False,
    frame_ms: int = 100,
    batch: int = 64,
) -> Path:
    """Latent walks from z(2p) to z(2p+1) of `seed`, p < paths.

    PNG: one row per path, one column per step. GIF: one frame per step (there and back, so it
    loops smoothly), each frame a grid of the paths.
    """
    out = check_out_path(out, (".png", ".gif"))
    if frame_ms < 1 or batch < 1:
        raise SamplingError(f"--frame-ms and --batch must be >= 1, got {frame_ms} and {batch}")
    z = interpolation_latents(seed, paths, steps, tg.z_dim, mode, truncation)
    path_labels = labels_for(range(paths), tg.num_classes, class_id, balanced)
    flat = z.reshape(paths * steps, tg.z_dim)
    labels = None if path_labels is None else path_labels.repeat_interleave(steps)
    images = render_batched(tg.G, flat, labels, batch)
    if out.suffix.lower() == ".png":
        return save_grid(images, out, rows=paths)
    per_step = images.reshape(paths, steps, *images.shape[1:]).transpose(0, 1)
    order = list(range(steps)) + list(range(steps - 2, 0, -1))
    frames = [Image.fromarray(make_grid(per_step[k], rows=square_rows(paths))) for k in order]
    save = (
        lambda tmp: frames[0].save(  # noqa: E731
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0
        )
    )
    return atomic_write(out, save)
