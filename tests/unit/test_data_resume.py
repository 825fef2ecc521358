"""A stream told how many batches were already taken continues exactly where the first one was."""

import pytest
import torch

from gandist.data.specs import expand_shards
from gandist.data.stream import StreamSpec, make_loader


@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("skip", [0, 1, 4, 5])
def test_skip_batches_continues_the_stream(tiny_shards, workers, skip):
    def spec(skip_batches):
        return StreamSpec(
            urls=expand_shards(tiny_shards),
            batch_per_gpu=8,
            resolution=32,
            channels=1,
            seed=3,
            rank=0,
            shuffle_buffer=20,
            xflip=True,
            skip_batches=skip_batches,
        )

    def take(loader, n):
        it = iter(loader)
        return [next(it) for _ in range(n)]

    straight = take(make_loader(spec(0), num_workers=workers, prefetch_factor=2), skip + 4)
    resumed = take(make_loader(spec(skip), num_workers=workers, prefetch_factor=2), 4)
    for (a_img, a_lab), (b_img, b_lab) in zip(straight[skip:], resumed):
        assert torch.equal(a_img, b_img) and torch.equal(a_lab, b_lab)
