"""Every image type webdataset's default decoder reads is a training image for gandist too."""

import io
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from gandist.data.images import IMAGE_KEYS, BadSample, decode_array
from gandist.data.stream import decode_image

# extension -> (PIL format, PIL mode to save, lossless)
SAVED_AS = {
    "png": ("PNG", "RGB", True),
    "jpg": ("JPEG", "RGB", False),
    "jpeg": ("JPEG", "RGB", False),
    "jpe": ("JPEG", "RGB", False),
    "jfif": ("JPEG", "RGB", False),
    "webp": ("WEBP", "RGB", False),
    "bmp": ("BMP", "RGB", True),
    "dib": ("DIB", "RGB", True),
    "tif": ("TIFF", "RGB", True),
    "tiff": ("TIFF", "RGB", True),
    "ppm": ("PPM", "RGB", True),
    "pnm": ("PPM", "RGB", True),
    "pgm": ("PPM", "L", True),
    "pbm": ("PPM", "1", True),
    "gif": ("GIF", "L", True),
    "tga": ("TGA", "RGB", True),
}


def _image(mode: str) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32]
    rgb = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=2).clip(0, 255).astype(np.uint8)
    if mode == "L":
        return rgb[:, :, 0]
    if mode == "1":
        return np.where((xx + yy) % 3 == 0, 255, 0).astype(np.uint8)
    return rgb


def _encode(array: np.ndarray, fmt: str, mode: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert("1") if mode == "1" else image).save(buf, format=fmt)
    return buf.getvalue()


def test_every_image_key_is_one_webdataset_decodes():
    assert set(IMAGE_KEYS) - {"npy"} <= set(wds.autodecode.IMAGE_EXTENSIONS)
    assert set(SAVED_AS) == set(IMAGE_KEYS) - {"npy"}  # each one is tested below


@pytest.mark.parametrize("ext", sorted(SAVED_AS))
def test_each_image_type_decodes_as_webdataset_decodes_it(ext):
    fmt, mode, lossless = SAVED_AS[ext]
    array = _image(mode)
    data = _encode(array, fmt, mode)
    channels = 1 if mode in ("L", "1") else 3
    ours = decode_array({ext: data}, channels)
    theirs = np.asarray(wds.autodecode.imagehandler("rgb8" if channels == 3 else "l8")(f"x.{ext}", data))
    assert ours.shape == (32, 32, channels)
    assert np.array_equal(ours.reshape(theirs.shape), theirs), ext
    if lossless:
        assert np.array_equal(ours.reshape(array.shape), array), ext


def test_the_first_frame_of_an_animated_gif_and_upper_case_keys():
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_array({"gif": buf.getvalue()}, 1)[0, 0, 0] == 10


def test_sixteen_bit_grey_keeps_its_top_byte():
    array = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="TIFF")
    assert np.array_equal(decode_array({"tiff": buf.getvalue()}, 1)[:, :, 0], (array >> 8).astype(np.uint8))


def test_other_extensions_are_no_image():
    with pytest.raises(BadSample, match="no image"):
        decode_array({"txt": b"hello", "cls": b"1"}, 1)


@pytest.mark.parametrize("ext", ["npy", "png"])
def test_decoded_tensors_are_writable_without_numpy_warnings(ext):
    array = _image("L")
    buf = io.BytesIO()
    if ext == "npy":
        np.save(buf, array)
    else:
        Image.fromarray(array).save(buf, format="PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.from_numpy warns about read-only arrays
        image = decode_image({ext: buf.getvalue()}, 1, 32)
    assert image.shape == (1, 32, 32) and torch.equal(image[0], torch.from_numpy(array))
