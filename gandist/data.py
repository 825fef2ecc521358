"""Reading WebDataset shards into endless per-rank streams of uint8 image batches.

    shard spec -> resampled shard URLs (seeded by seed, rank, worker, restart)
               -> tar samples -> shuffle buffer -> decode to uint8 C x H x W -> batches
               -> DataLoader workers (batch_size=None) -> pinned host batch

Each rank draws shards at random with its own seed, so every rank gets an endless stream of the
same length and no rank waits for another at an epoch boundary (see shared/DESIGN.md). The loader
is deliberately NOT passed through `accelerator.prepare`. Images stay uint8 until they are on the
device; `to_device_float` normalises there.
"""

from __future__ import annotations

import io
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image

EMBEDDED_DIR = Path(__file__).parent / "assets" / "fashion_mnist"
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "npy")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*:")


class DataError(ValueError):
    """A data problem (missing shards, wrong image size), naming the spec or shard."""


def expand_shards(spec: str) -> list[str]:
    """Turn a shard spec (empty, path, brace pattern, comma list, URL, pipe:) into a list of URLs.

    Local paths must exist; the error names the spec and the first missing file.
    """
    if not spec.strip():
        urls = sorted(str(p) for p in EMBEDDED_DIR.glob("*.tar*"))
        if not urls:
            raise DataError(f"the embedded dataset is missing from {EMBEDDED_DIR}: reinstall gandist")
        return urls
    urls = []
    for part in spec.split(","):
        part = part.strip()
        if part:
            urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise DataError(f"data.shards={spec!r} names no shard")
    for url in urls:
        if not _URL.match(url) or url.startswith("file:"):
            path = Path(url.removeprefix("file:"))
            if path.is_dir():
                raise DataError(
                    f"data.shards={spec!r}: {path} is a folder; name its shards, e.g. {path}/*-{{000000..000009}}.tar"
                )
            if not path.is_file():
                raise DataError(f"data.shards={spec!r}: shard {path} does not exist")
    return urls


def decode_image(sample: dict, channels: int, resolution: int) -> torch.Tensor:
    """Decode the image of a sample to a uint8 C x H x W tensor, checking its size."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise DataError(
            f"sample {sample.get('__key__')!r} of {sample.get('__url__')!r} has no image ({', '.join(IMAGE_KEYS)})"
        )
    data = sample[key]
    if key == "npy":
        array = np.load(io.BytesIO(data), allow_pickle=False)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.shape[2] != channels:
            array = array.mean(axis=2, keepdims=True).astype(np.uint8) if channels == 1 else np.repeat(array, 3, axis=2)
    else:
        with Image.open(io.BytesIO(data)) as image:
            array = np.array(image.convert("L" if channels == 1 else "RGB"))
        if array.ndim == 2:
            array = array[:, :, None]
    if array.shape[0] != resolution or array.shape[1] != resolution:
        raise DataError(
            f"sample {sample.get('__key__')!r} of {sample.get('__url__')!r} "
            f"is {array.shape[1]}x{array.shape[0]} px but "
            f"model.resolution={resolution}: re-shard the data at that resolution or change model.resolution"
        )
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


@dataclass
class StreamSpec:
    """Everything that defines one rank's stream; picklable so DataLoader workers can rebuild it."""

    urls: list[str]
    batch_per_gpu: int
    resolution: int
    channels: int
    seed: int
    rank: int
    restart: int = 0
    shuffle_buffer: int = 1000
    xflip: bool = False


def _stream_seed(spec: StreamSpec) -> int:
    info = torch.utils.data.get_worker_info()
    worker = info.id if info is not None else 0
    return hash((spec.seed, spec.rank, worker, spec.restart)) & 0x7FFFFFFF


class ShardStream(torch.utils.data.IterableDataset):
    """An endless stream of (images uint8 N x C x H x W, labels int64 N) batches for one rank.

    Labels are -1 where a sample has no `cls`.
    """

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec = self.spec
        seed = _stream_seed(spec)
        rng = random.Random(seed)
        shards = wds.ResampledShards(spec.urls, seed=seed, worker_seed=lambda: 0, deterministic=True)
        samples = wds.tarfile_to_samples(handler=wds.reraise_exception)(iter(shards))
        buffer: list[tuple[torch.Tensor, int]] = []
        images: list[torch.Tensor] = []
        labels: list[int] = []
        for sample in samples:
            image = decode_image(sample, spec.channels, spec.resolution)
            label = int(sample["cls"]) if "cls" in sample else -1
            if spec.shuffle_buffer > 1:
                buffer.append((image, label))
                if len(buffer) < spec.shuffle_buffer:
                    continue
                j = rng.randrange(len(buffer))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                image, label = buffer.pop()
            if spec.xflip and rng.random() < 0.5:
                image = image.flip(-1)
            images.append(image)
            labels.append(label)
            if len(images) == spec.batch_per_gpu:
                yield torch.stack(images), torch.tensor(labels, dtype=torch.int64)
                images, labels = [], []


def make_loader(
    spec: StreamSpec, num_workers: int, prefetch_factor: int = 4, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """A DataLoader over a rank's ShardStream; batches are formed in the workers."""
    kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers > 0 else {}
    return torch.utils.data.DataLoader(
        ShardStream(spec), batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )


def to_device_float(images: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 [0, 255] host batch -> float [-1, 1] on the device (copy first, convert there)."""
    images = images.to(device, non_blocking=True)
    return (images.float() / 127.5 - 1.0).contiguous(memory_format=memory_format)
