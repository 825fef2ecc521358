"""gandist's tar reader inside a webdataset pipeline gives what webdataset's own stage gives."""

import numpy as np
import pytest
import torch
import webdataset as wds

from gandist.data.pipeline import tarfile_to_samples
from gandist.data.shards import TruncatedShard, write_shards


def _shards(folder, compress=False, count=40):
    rng = np.random.default_rng(0)
    samples = [((rng.random((8, 8)) * 255).astype(np.uint8), i % 10) for i in range(count)]
    return [str(p) for p in write_shards(samples, folder, "p", shard_size=10, compress=compress)]


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.gz"])
def test_the_stage_yields_webdataset_s_samples(tmp_path, compress):
    urls = _shards(tmp_path, compress)
    theirs = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    ours = list(wds.DataPipeline(wds.SimpleShardList(urls), tarfile_to_samples()))
    assert len(ours) == 40 and ours == theirs


def test_a_full_pipeline_with_decoding_and_loader_workers(tmp_path):
    urls = _shards(tmp_path)
    dataset = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        tarfile_to_samples(),
        wds.shuffle(16),
        wds.decode("torchrgb8"),
        wds.to_tuple("png", "cls", "__key__"),
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    items = list(loader)
    assert sorted(key for _, _, key in items) == [f"{i:08d}" for i in range(40)]
    image, label, key = items[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and label == int(key) % 10


def test_errors_go_to_the_handler(tmp_path):
    urls = _shards(tmp_path)
    with open(urls[1], "r+b") as f:  # samples of 2 x 1 KiB (header + padded data): cut inside the second one
        f.truncate(3 * 1024 + 100)
    with pytest.raises(TruncatedShard, match="truncated"):
        list(wds.DataPipeline(wds.SimpleShardList(urls), tarfile_to_samples()))
    kept = list(wds.DataPipeline(wds.SimpleShardList(urls), tarfile_to_samples(handler=wds.ignore_and_continue)))
    assert len(kept) == 30 + 1  # three whole shards and the sample before the cut
    stopped = list(wds.DataPipeline(wds.SimpleShardList(urls), tarfile_to_samples(handler=wds.ignore_and_stop)))
    assert len(stopped) == 10 + 1
