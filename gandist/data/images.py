"""One image in and out of a shard: encode, decode (with the checks a sample must pass), resize.

Decoders return uint8 H x W x C arrays (C = 1 for grey images, whatever the run wants: batches
broadcast grey to RGB); a sample that cannot be used raises `BadSample`, which the stream skips and counts.
"""

from __future__ import annotations

import ast
import io

import numpy as np
from PIL import Image

FORMATS = ("png", "jpg", "webp", "npy")
# What a sample's image may be: the raster formats that webdataset's default image decoder hands to PIL, plus
# raw .npy arrays. A member's whole extension after the key (lower case) must be one of these; a sample with
# several takes the first in this order. GIF and TIFF give their first frame.
IMAGE_KEYS = (
    "png",
    "jpg",
    "jpeg",
    "webp",
    "npy",
    "bmp",
    "tif",
    "tiff",
    "ppm",
    "pgm",
    "pbm",
    "pnm",
    "gif",
    "jpe",
    "jfif",
    "dib",
    "tga",
)
RESIZE_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "area": Image.Resampling.BOX,  # box filter = area averaging when down-sampling
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


class BadSample(ValueError):
    """One sample that cannot be used; it is skipped and counted."""


def encode_image(image: np.ndarray, fmt: str) -> bytes:
    """Encode an H x W (grey) or H x W x 3 uint8 array as png, jpg, webp or npy bytes."""
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
        return buf.getvalue()
    pil_format = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}.get(fmt)
    if pil_format is None:
        raise ValueError(f"unknown image format {fmt!r} (known: {', '.join(FORMATS)})")
    buf = io.BytesIO()
    options = {"quality": 95} if fmt in ("jpg", "webp") else {"compress_level": 6}
    Image.fromarray(image).save(buf, format=pil_format, **options)
    return buf.getvalue()


def resize(image: np.ndarray, resolution: int, method: str = "lanczos", crop: str = "center") -> np.ndarray:
    """Make an H x W (x C) uint8 image resolution x resolution.

    crop="center" cuts the largest centred square first (no distortion); crop="none" resizes the
    whole image (the aspect ratio changes). `method` is one of RESIZE_FILTERS (area = box filter).
    """
    if method not in RESIZE_FILTERS:
        raise ValueError(f"unknown resize method {method!r} (known: {', '.join(RESIZE_FILTERS)})")
    if crop not in ("center", "none"):
        raise ValueError(f"unknown crop {crop!r} (known: center, none)")
    h, w = image.shape[:2]
    if crop == "center":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    if image.shape[0] == resolution and image.shape[1] == resolution:
        return np.ascontiguousarray(image)
    squeezed = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
    out = np.asarray(
        Image.fromarray(np.ascontiguousarray(squeezed)).resize((resolution, resolution), RESIZE_FILTERS[method])
    )
    return out[:, :, None] if image.ndim == 3 and image.shape[2] == 1 else out


_NPY_HEADERS: dict[bytes, tuple[str, bool, tuple]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """np.load without its per-call overhead: parse (and cache) the header, view the bytes."""
    if data[:6] != b"\x93NUMPY":
        raise BadSample("not an .npy array")
    start = 10 if data[6] == 1 else 12
    length = int.from_bytes(data[8:start], "little")
    header = data[start : start + length]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        d = ast.literal_eval(header.decode("latin1"))
        parsed = _NPY_HEADERS[header] = (d["descr"], d["fortran_order"], tuple(d["shape"]))
    descr, fortran, shape = parsed
    if descr not in ("|u1", "<u1", "u1") or fortran:
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.frombuffer(data, dtype=np.uint8, offset=start + length).reshape(shape)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """H x W (x C) uint8 -> H x W x 1 or H x W x `channels` (grey stays 1: batches broadcast it to RGB)."""
    if array.dtype != np.uint8:
        raise BadSample(f"array of {array.dtype}, expected uint8")
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise BadSample(f"array of shape {array.shape}, expected H x W (x C)")
    if array.shape[2] not in (1, 3, 4) and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)  # C x H x W
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if channels == 1 and array.shape[2] == 3:  # ITU-R 601-2 luma in PIL's fixed point: equal to convert("L")
        rgb = array.astype(np.uint32)
        luma = rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000
        return (luma >> 16).astype(np.uint8)[:, :, None]
    return array


def eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit grey image (PIL modes I;16*, or I holding 16-bit values) as 8 bits: its top byte; others as they are.

    PIL's own convert("L") clips such images at 255 (a 16-bit PNG turns white).
    """
    if not image.mode.startswith("I"):
        return image
    values = np.asarray(image).astype(np.int64).clip(0, 65535)
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def decode_array(sample: dict, channels: int) -> np.ndarray:
    """The image of a sample as uint8 H x W x C (C = `channels`, or 1 for a grey image); raises BadSample."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise BadSample(f"no image ({', '.join(IMAGE_KEYS)}); has {sorted(k for k in sample if k[:2] != '__')}")
    try:
        if key == "npy":
            return _to_channels(_load_npy(sample[key]), channels)
        image = eight_bit(Image.open(io.BytesIO(sample[key])))  # a GIF or TIFF opens at its first frame
        if image.mode != "L" and (channels == 1 or image.mode != "RGB"):
            image = image.convert("L" if channels == 1 else "RGB")
        return _to_channels(np.asarray(image), channels)
    except BadSample:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure makes this one sample unusable
        raise BadSample(f"undecodable {key}: {type(e).__name__}: {e}") from None
