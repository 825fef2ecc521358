"""Writing WebDataset shards: tar files of samples `<key>.<ext>` (image) and `<key>.cls` (label).

Each shard is written to a temporary name in the same folder and renamed when complete, so a
crash never leaves a half-written shard under a real name. A JSON index next to the shards says
how many samples there are and what they are.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

INDEX_NAME = "index.json"


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode an H x W (grey) or H x W x 3 uint8 array as png, jpg, webp or npy bytes."""
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return buf.getvalue()
    pil_format = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}.get(fmt)
    if pil_format is None:
        raise ValueError(f"unknown image format {fmt!r} (known: png, jpg, webp, npy)")
    buf = io.BytesIO()
    options = {"quality": 95} if fmt in ("jpg", "webp") else {"compress_level": 6}
    Image.fromarray(image).save(buf, format=pil_format, **options)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards: same input, same bytes
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    samples: Iterable[tuple[np.ndarray, int | None]],
    out_dir: str | Path,
    name: str,
    shard_size: int = 2000,
    fmt: str = "png",
    compress: bool = False,
    meta: dict | None = None,
) -> list[Path]:
    """Write (image, label-or-None) pairs as shards `out_dir/name-%06d.tar[.gz]` plus `index.json`.

    Returns the shard paths. `meta` (resolution, channels, classes, ...) goes into the index.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".tar.gz" if compress else ".tar"
    paths: list[Path] = []
    count = 0
    tar = None
    tmp = None
    try:
        for image, label in samples:
            if count % shard_size == 0:
                if tar is not None:
                    tar.close()
                    os.replace(tmp, paths[-1])
                paths.append(out_dir / f"{name}-{len(paths):06d}{suffix}")
                tmp = paths[-1].with_name(paths[-1].name + f".tmp{os.getpid()}")
                tar = tarfile.open(tmp, "w:gz" if compress else "w", **({"compresslevel": 9} if compress else {}))
            key = f"{count:08d}"
            _add(tar, f"{key}.{fmt}", encode_image(image, fmt))
            if label is not None:
                _add(tar, f"{key}.cls", str(int(label)).encode())
            count += 1
        if tar is not None:
            tar.close()
            os.replace(tmp, paths[-1])
            tar = None
    finally:
        if tar is not None:
            tar.close()
            Path(tmp).unlink(missing_ok=True)
    index = {
        "name": name,
        "num_samples": count,
        "format": fmt,
        "shards": [p.name for p in paths],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(meta or {}),
    }
    tmp_index = out_dir / f".{INDEX_NAME}.tmp{os.getpid()}"
    tmp_index.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp_index, out_dir / INDEX_NAME)
    return paths


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST layout, optionally gzipped) into a numpy array."""
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} values")
    return array.reshape(shape)


def resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """Center-crop to a square and resize to resolution x resolution (Lanczos)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))


def iter_idx(
    images_path: str | Path, labels_path: str | Path | None, resolution: int
) -> Iterator[tuple[np.ndarray, int | None]]:
    """(image, label) pairs from MNIST-layout IDX files, resized."""
    images = read_idx(images_path)
    labels = read_idx(labels_path) if labels_path else None
    for i, image in enumerate(images):
        yield resize(image, resolution), (int(labels[i]) if labels is not None else None)
