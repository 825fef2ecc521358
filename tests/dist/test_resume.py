"""Resume equals uninterrupted: N steps straight vs K steps, stop, resume, N - K steps (real processes)."""

import pytest
import torch

from gandist import checkpoint
from tests.conftest import PYTHON, ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow
BATCH, N, K = 32, 10, 5  # K odd: with 2 loader workers the resumed stream starts in the middle of a round


def _train(world, tmp_path, name, steps):
    args = [
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"output_dir={tmp_path}",
        f"run_name={name}",
        f"train.kimg={steps * BATCH / 1000}",
        f"train.batch={BATCH}",
        "data.num_workers=2",
        "data.xflip=true",
        "data.shuffle_buffer=50",
    ]
    run(
        accelerate_cmd(ROOT / "gandist/train.py", *args, nproc=world)
        if world > 1
        else [PYTHON, "-m", "gandist.train", *args]
    )
    return checkpoint.latest_checkpoint(tmp_path / name)


def _equal(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


@pytest.mark.parametrize("world", [1, 2])
def test_resumed_run_is_bit_identical_to_the_uninterrupted_one(tmp_path, world):
    straight = _train(world, tmp_path, "straight", N)
    first = _train(world, tmp_path, "resumed", K)
    assert first.name == f"step-{K:09d}"
    resumed = _train(world, tmp_path, "resumed", N)
    assert straight.name == resumed.name == f"step-{N:09d}"
    a = torch.load(straight / "state.pt", weights_only=False)
    b = torch.load(resumed / "state.pt", weights_only=False)
    for key in ("G", "D", "G_ema", "opt_G", "opt_D", "scaler_G", "scaler_D", "noise", "nimg", "step"):
        _equal(a[key], b[key], key)  # weights, Adam moments, the shared noise generator
    assert b["progress"]["restart"] == 1 and b["progress"]["data_batches"] == N
    for rank in range(world):  # each rank's CPU random state: the next draws are the same
        _equal(
            torch.load(straight / f"rank-{rank:05d}.pt", weights_only=False),
            torch.load(resumed / f"rank-{rank:05d}.pt", weights_only=False),
            f"rank {rank}",
        )
