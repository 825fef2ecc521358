import numpy as np
import pytest
import torch

from gandist.data import DataError, ShardStream, StreamSpec, expand_shards, make_loader, to_device_float
from gandist.shards import read_idx, write_shards


def _spec(urls, **kw):
    base = dict(urls=urls, batch_per_gpu=8, resolution=32, channels=1, seed=0, rank=0, shuffle_buffer=16)
    return StreamSpec(**{**base, **kw})


def test_embedded_dataset_is_real_shards():
    urls = expand_shards("")
    assert len(urls) >= 2 and all(u.endswith(".tar.gz") for u in urls)
    images, labels = next(iter(ShardStream(_spec(urls))))
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 32, 32)
    assert labels.min() >= 0 and labels.max() <= 9
    assert images.float().std() > 20  # real pictures, not blank


def test_brace_pattern_and_labels(tiny_shards):
    urls = expand_shards(tiny_shards)
    assert len(urls) == 4
    stream = iter(ShardStream(_spec(urls, shuffle_buffer=0)))
    images, labels = next(stream)
    assert images.shape == (8, 1, 32, 32) and set(labels.tolist()) <= set(range(10))


def test_streams_are_seeded_per_rank_and_reproducible(tiny_shards):
    urls = expand_shards(tiny_shards)
    first = lambda rank, seed=0: next(iter(ShardStream(_spec(urls, rank=rank, seed=seed))))[0]
    assert torch.equal(first(0), first(0))
    assert not torch.equal(first(0), first(1))
    assert not torch.equal(first(0), first(0, seed=1))


def test_loader_with_workers_gives_batches(tiny_shards):
    loader = make_loader(_spec(expand_shards(tiny_shards)), num_workers=2, prefetch_factor=2)
    it = iter(loader)
    batches = [next(it) for _ in range(5)]  # more than one pass over 96 samples: the stream is endless
    assert all(b[0].shape == (8, 1, 32, 32) for b in batches)


def test_missing_and_empty_specs_fail_naming_the_spec(tmp_path):
    with pytest.raises(DataError, match=r"nothing-\{0\.\.1\}\.tar.*does not exist"):
        expand_shards(str(tmp_path / "nothing-{0..1}.tar"))
    with pytest.raises(DataError, match="names no shard"):
        expand_shards(" , ")
    with pytest.raises(DataError, match="is a folder"):
        expand_shards(str(tmp_path))


def test_wrong_resolution_is_a_clear_error(tiny_shards):
    with pytest.raises(DataError, match=r"32x32 px but model.resolution=64"):
        next(iter(ShardStream(_spec(expand_shards(tiny_shards), resolution=64))))


def test_rgb_from_grey_and_npy(tmp_path):
    rng = np.random.default_rng(1)
    rgb = [((rng.random((32, 32, 3)) * 255).astype(np.uint8), None) for _ in range(8)]
    write_shards(rgb, tmp_path, "rgb", shard_size=8, fmt="npy")
    images, labels = next(iter(ShardStream(_spec([str(tmp_path / "rgb-000000.tar")], channels=3, shuffle_buffer=0))))
    assert images.shape == (8, 3, 32, 32) and (labels == -1).all()
    assert torch.equal(images[0], torch.from_numpy(rgb[0][0]).permute(2, 0, 1))


def test_normalisation_on_device():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    y = to_device_float(x, torch.device("cpu"), torch.contiguous_format)
    assert y.dtype == torch.float32 and y.flatten().tolist() == [-1.0, 1.0]


def test_idx_reader(tmp_path):
    import gzip

    data = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(12))
    (tmp_path / "x.gz").write_bytes(gzip.compress(data))
    array = read_idx(tmp_path / "x.gz")
    assert array.shape == (2, 2, 3) and array[1, 1, 2] == 11
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")
