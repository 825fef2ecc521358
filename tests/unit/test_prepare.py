import gzip
import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gandist.cli import main as gandist
from gandist.data.images import resize
from gandist.data.prepare import FASHION_MNIST_DIR, EncodeOptions, PrepareError, Source, open_source, prepare
from gandist.data.specs import expand_shards
from gandist.data.stream import ShardStream, StreamSpec, iter_shard
from tests.conftest import BIN, ROOT


def _read_all(out_dir, res, channels=1):
    """Every sample of a prepared folder, in order: images N x C x H x W and labels."""
    spec = StreamSpec(expand_shards(str(out_dir)), 10_000, res, channels, 0, 0, shuffle_buffer=0, finite=True)
    batches = list(ShardStream(spec))
    assert sum(b[2] for b in batches) == 0
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def _pattern(i, size=48, rgb=True):
    yy, xx = np.mgrid[0:size, 0:size]
    channels = [(xx * 5 + i * 10) % 256, (yy * 5) % 256, ((xx + yy) * 2 + i) % 256]
    image = np.stack(channels, axis=2).astype(np.uint8)
    return image if rgb else image[:, :, 0]


@pytest.fixture
def image_folder(tmp_path):
    """6 RGB images of 48 x 40 px in two class folders, as PNG and JPEG files."""
    root = tmp_path / "images"
    for i in range(6):
        folder = root / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_pattern(i)[:40]).save(folder / f"{i}.{'png' if i < 4 else 'jpg'}")
    return root


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "npy"])
def test_image_folder_round_trip_each_format(image_folder, tmp_path, fmt):
    out = tmp_path / "out"
    assert gandist(["prepare", str(image_folder), str(out), "--resolution", "32", "--format", fmt]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 6 and index["format"] == fmt and index["resolution"] == 32
    assert index["channels"] == 3 and index["classes"] == ["cats", "dogs"] and index["num_classes"] == 2
    images, labels = _read_all(out, 32, 3)
    assert images.shape == (6, 3, 32, 32) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    # each image is the center crop of its source resized with Lanczos (exact for lossless formats)
    expected = {}
    for path in image_folder.rglob("*.*"):
        source = np.asarray(Image.open(path).convert("RGB"))
        expected[path.parent.name] = expected.get(path.parent.name, []) + [resize(source, 32)]
    for image, label in zip(images, labels):
        candidates = expected[["cats", "dogs"][label]]
        error = min(np.abs(image.permute(1, 2, 0).numpy().astype(int) - c.astype(int)).mean() for c in candidates)
        assert error == 0 if fmt in ("png", "npy") else error < 8, (fmt, error)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_idx_folder_round_trip(tmp_path):
    images = np.stack([_pattern(i, 28, rgb=False) for i in range(10)])
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8) % 3)
    out = tmp_path / "out"
    assert gandist(["prepare", str(tmp_path), str(out), "--no-shuffle", "--resize", "area"]) == 0
    got, labels = _read_all(out, 32)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert np.array_equal(got[3, 0].numpy(), resize(images[3], 32, "area"))
    assert json.loads((out / "index.json").read_text())["channels"] == 1


def test_npy_and_npz_round_trip_with_labels(tmp_path):
    images = np.stack([_pattern(i, 32) for i in range(7)])
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", np.arange(7) % 2)
    assert gandist(["prepare", str(tmp_path / "x.npy"), str(tmp_path / "a"), "--labels", str(tmp_path / "y.npy")]) == 0
    got, labels = _read_all(tmp_path / "a", 32, 3)
    order = [int(np.flatnonzero((images == g.permute(1, 2, 0).numpy()).all(axis=(1, 2, 3)))[0]) for g in got]
    assert sorted(order) == list(range(7)) and labels.tolist() == [i % 2 for i in order]  # shuffled, labels follow
    np.savez(tmp_path / "z.npz", images=images[:, :, :, 0].astype(np.float32) / 255, labels=np.arange(7))
    assert (
        gandist(["prepare", str(tmp_path / "z.npz"), str(tmp_path / "b"), "--resolution", "64", "--format", "npy"]) == 0
    )
    got, labels = _read_all(tmp_path / "b", 64)
    assert got.shape == (7, 1, 64, 64) and sorted(labels.tolist()) == list(range(7))


def test_reshard_and_reencode_existing_shards(tmp_path, tiny_shards):
    out = tmp_path / "npy"
    assert gandist(["prepare", tiny_shards, str(out), "--format", "npy", "--shard-size", "10"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["num_samples"] == 96 and len(index["shards"]) == 10 and index["shard_samples"][-1] == 6
    before, labels_before = _read_all(tmp_path / "shards", 32)
    after, labels_after = _read_all(out, 32)
    assert torch.equal(before, after) and torch.equal(labels_before, labels_after)  # same order, lossless


def test_shard_bytes_limit(tmp_path, tiny_shards):
    out = tmp_path / "small"
    assert gandist(["prepare", tiny_shards, str(out), "--format", "npy", "--shard-bytes", "20k"]) == 0
    sizes = [p.stat().st_size for p in sorted(out.glob("*.tar"))]
    assert len(sizes) > 3 and max(sizes) <= 20 * 1024 + 1024  # + the tar end-of-archive blocks


def test_parallel_encoding_gives_identical_shards(tmp_path, image_folder):
    for workers in ("1", "2"):
        assert gandist(["prepare", str(image_folder), str(tmp_path / workers), "--num-workers", workers]) == 0
    one, two = sorted((tmp_path / "1").glob("*.tar")), sorted((tmp_path / "2").glob("*.tar"))
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]


class _Crashing(Source):
    """Yields images, then fails as a killed or crashing job would."""

    name, channels = "crash", 1

    def items(self):
        yield from range(150)
        raise KeyboardInterrupt

    def load(self, item):
        return np.full((32, 32), item, np.uint8), None


def test_a_crash_leaves_the_old_dataset_as_it_was(tmp_path):
    old = prepare(_Counting(40), tmp_path, EncodeOptions(), name="crash", shard_size=10, shuffle=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        prepare(_Crashing(), tmp_path, EncodeOptions(), shard_size=10, shuffle=False, overwrite=True)
    # 128 samples of the new set were encoded when it crashed: none of them replaced the old set
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert old["num_samples"] == 40 and json.loads((tmp_path / "index.json").read_text())["num_samples"] == 40


def test_an_interrupted_commit_is_finished_by_the_next_prepare(tmp_path):
    prepare(_Counting(40), tmp_path, EncodeOptions(), name="crash", shard_size=10, shuffle=False)
    # a staged set of 20 whose commit was cut short after its first shard had moved into place
    staging = tmp_path / ".prepare-crash.tmp1"
    prepare(_Counting(20, offset=100), staging, EncodeOptions(), name="crash", shard_size=10, shuffle=False)
    journal = {
        "staging": staging.name,
        "new": ["crash-000000.tar", "crash-000001.tar"],
        "old": [f"crash-{i:06d}.tar" for i in range(4)],
    }
    (tmp_path / ".crash.commit.json").write_text(json.dumps(journal))
    os.replace(staging / "crash-000000.tar", tmp_path / "crash-000000.tar")
    with pytest.raises(PrepareError, match="already holds shards"):  # finishes the commit, then refuses as usual
        prepare(_Counting(5), tmp_path, EncodeOptions(), name="crash", shard_size=10)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["num_samples"] == 20 and sorted(p.name for p in tmp_path.iterdir()) == [
        "crash-000000.tar",
        "crash-000001.tar",
        "index.json",
    ]
    first = [s["png"] for s in iter_shard(str(tmp_path / "crash-000000.tar"))]
    assert len(first) == 10


class _Counting(Source):
    """`count` grey images whose pixels are their number (plus `offset`)."""

    channels = 1

    def __init__(self, count: int, offset: int = 0):
        self.count, self.offset, self.name = count, offset, "crash"

    def items(self):
        return list(range(self.offset, self.offset + self.count))

    def load(self, item):
        return np.full((32, 32), item % 256, np.uint8), None


def test_16_bit_grey_images_are_scaled_to_8_bits(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(folder / "ramp.png")
    assert Image.open(folder / "ramp.png").mode.startswith("I")
    prepare(open_source(str(folder)), tmp_path / "out", EncodeOptions(channels=1), shuffle=False)
    (sample,) = [s for url in expand_shards(str(tmp_path / "out")) for s in iter_shard(url)]
    pixels = np.asarray(Image.open(io.BytesIO(sample["png"])))
    assert abs(pixels.mean() - ramp.mean() / 257) < 1 and pixels.max() > 250 and pixels.min() < 5


def test_fashion_mnist_matches_the_embedded_dataset(tmp_path):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{FASHION_MNIST_DIR} missing (apt-get install dataset-fashion-mnist)")
    out = tmp_path / "fm"
    # the embedded sample holds the first 600 images per class: all among the first 7000
    assert gandist(["prepare", "fashion-mnist", str(out), "--limit", "7000", "--no-shuffle"]) == 0
    ours = {(s["png"], s["cls"]) for url in expand_shards(str(out)) for s in iter_shard(url)}
    embedded = {(s["png"], s["cls"]) for url in expand_shards("") for s in iter_shard(url)}
    assert len(ours) == 7000 and len(embedded) == 6000 and embedded <= ours  # byte-identical samples
    ours_index = json.loads((out / "index.json").read_text())
    embedded_index = json.loads((Path(expand_shards("")[0]).parent / "index.json").read_text())
    for key in ("name", "format", "resolution", "channels", "num_classes", "classes"):
        assert ours_index[key] == embedded_index[key], key


def test_errors_name_the_source_and_the_fix(tmp_path, capsys, image_folder):
    assert gandist(["prepare", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "does not exist or is not a known kind" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert gandist(["prepare", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    assert "no images" in capsys.readouterr().err
    assert gandist(["prepare", str(image_folder), str(tmp_path / "o"), "--labels", "y.npy"]) == 2
    assert "--labels applies to .npy/.npz" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4, 5, 6), np.uint8))
    assert gandist(["prepare", str(tmp_path / "bad.npy"), str(tmp_path / "o")]) == 2
    assert "bad.npy: images of shape (2, 3, 4, 5, 6)" in capsys.readouterr().err
    assert gandist(["prepare", str(tmp_path / "s-{000000..000003}.tar"), str(tmp_path / "o")]) == 2
    assert "SRC=" in capsys.readouterr().err
    assert gandist(["prepare", str(image_folder), str(tmp_path / "twice")]) == 0
    assert gandist(["prepare", str(image_folder), str(tmp_path / "twice")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert gandist(["prepare", str(image_folder), str(tmp_path / "twice"), "--overwrite", "--shard-size", "4"]) == 0
    assert len(list((tmp_path / "twice").glob("*.tar"))) == 2


def test_unreadable_source_images_are_skipped_and_reported(tmp_path, image_folder, capsys):
    (image_folder / "dogs" / "broken.png").write_bytes(b"not a png")
    assert gandist(["prepare", str(image_folder), str(tmp_path / "o")]) == 0
    out = capsys.readouterr()
    assert "skipped" in out.err and "broken.png" in out.err and "skipped 1 unreadable" in out.out
    assert json.loads((tmp_path / "o" / "index.json").read_text())["num_samples"] == 6


@pytest.mark.slow
def test_gandist_prepare_command_line(tmp_path, tiny_shards):
    proc = subprocess.run(
        [str(BIN / "gandist"), "prepare", tiny_shards, str(tmp_path / "o"), "--format", "jpg", "--compress"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "96 images (32 px, 1 channel(s), jpg) in 1 shard(s)" in proc.stdout
    assert (tmp_path / "o" / "tiny-000000.tar.gz").is_file()


def _labelled_npz(path, counts):
    """An .npz of 32 px grey images whose pixels all equal the image's index; class c has counts[c] images,
    interleaved."""
    labels = np.array([c for c, n in enumerate(counts) for _ in range(n)])
    labels = labels[np.random.default_rng(1).permutation(len(labels))]
    images = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None], (len(labels), 32, 32))
    np.savez(path, images=np.ascontiguousarray(images), labels=labels)
    return labels


def _indices_and_labels(out_dir):
    images, labels = _read_all(out_dir, 32)
    return images[:, 0, 0, 0].tolist(), labels.tolist()


def test_per_class_subset_is_balanced_seeded_and_nested(tmp_path):
    source_labels = _labelled_npz(tmp_path / "a.npz", [10, 7, 5])
    src = str(tmp_path / "a.npz")
    assert gandist(["prepare", src, str(tmp_path / "s0"), "--per-class", "4"]) == 0
    picked, labels = _indices_and_labels(tmp_path / "s0")
    assert np.bincount(labels).tolist() == [4, 4, 4]
    assert [int(source_labels[i]) for i in picked] == labels  # every image keeps its own label
    index = json.loads((tmp_path / "s0" / "index.json").read_text())
    assert index["num_samples"] == 12 and index["per_class"] == 4 and index["subset_seed"] == 0

    # the same seed: the same shards, byte for byte; another seed: another subset
    assert gandist(["prepare", src, str(tmp_path / "again"), "--per-class", "4"]) == 0
    assert (tmp_path / "again" / "a-000000.tar").read_bytes() == (tmp_path / "s0" / "a-000000.tar").read_bytes()
    assert gandist(["prepare", src, str(tmp_path / "s1"), "--per-class", "4", "--seed", "1"]) == 0
    assert set(_indices_and_labels(tmp_path / "s1")[0]) != set(picked)

    # a smaller subset of the same seed lies inside the larger one
    assert gandist(["prepare", src, str(tmp_path / "two"), "--per-class", "2"]) == 0
    fewer, fewer_labels = _indices_and_labels(tmp_path / "two")
    assert np.bincount(fewer_labels).tolist() == [2, 2, 2] and set(fewer) <= set(picked)


def test_per_class_errors_name_the_option_and_the_class(tmp_path, capsys, image_folder):
    _labelled_npz(tmp_path / "a.npz", [10, 7, 5])
    assert gandist(["prepare", str(tmp_path / "a.npz"), str(tmp_path / "o"), "--per-class", "6"]) == 2
    assert "--per-class 6: class 2 has only 5 images" in capsys.readouterr().err
    assert gandist(["prepare", str(tmp_path / "a.npz"), str(tmp_path / "o"), "--per-class", "-1"]) == 2
    assert "--per-class must be positive" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros((4, 32, 32), np.uint8))
    assert gandist(["prepare", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--per-class", "1"]) == 2
    assert "--per-class 1: array" in capsys.readouterr().err  # names the source ...
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").glob("*.tar"))
    # ... and a folder source labels by sub-folder without decoding: two classes of three images
    assert gandist(["prepare", str(image_folder), str(tmp_path / "f"), "--per-class", "2"]) == 0
    assert np.bincount(_read_all(tmp_path / "f", 32, 3)[1].tolist()).tolist() == [2, 2]
