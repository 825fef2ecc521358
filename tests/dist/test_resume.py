"""Resume equals uninterrupted: N steps straight vs K steps, stop, resume, N - K steps (real processes)."""

import pytest
import torch

from gandist.training import checkpoint
from tests.conftest import PYTHON, ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow
BATCH, N, K = 32, 10, 5  # K odd: with 2 loader workers the resumed stream starts in the middle of a round


def _train(world, tmp_path, name, steps, extra=()):
    args = [
        *extra,
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
    elif type(a).__eq__ is object.__eq__:  # e.g. DeepSpeed's loss scaler: compare what it prints
        assert type(a) is type(b) and repr(a) == repr(b), (path, a, b)
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


def test_zero2_resumed_run_is_bit_identical_to_the_uninterrupted_one(tmp_path):
    zero2 = ["strategy.name=deepspeed", "strategy.zero_stage=2"]
    straight = _train(2, tmp_path, "straight", N, zero2)
    _train(2, tmp_path, "resumed", K, zero2)
    resumed = _train(2, tmp_path, "resumed", N, zero2)
    a = torch.load(straight / "state.pt", weights_only=False)
    b = torch.load(resumed / "state.pt", weights_only=False)
    for key in ("G", "D", "G_ema", "noise", "nimg", "step"):
        _equal(a[key], b[key], key)
    # the engines' own files: each rank's optimizer partition (Adam moments, fp32 master weights)
    files = sorted(p.relative_to(straight) for p in straight.rglob("*optim_states.pt"))
    assert len(files) == 4, files  # 2 nets x 2 ranks
    for rel in files:
        _equal(
            torch.load(straight / rel, weights_only=False)["optimizer_state_dict"],
            torch.load(resumed / rel, weights_only=False)["optimizer_state_dict"],
            str(rel),
        )


def test_zero2_checkpoint_at_another_world_size_is_refused_saying_what_to_do(tmp_path):
    import subprocess

    zero2 = ["strategy.name=deepspeed", "strategy.zero_stage=2"]
    saved = _train(2, tmp_path, "z", K, zero2)
    args = [
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"output_dir={tmp_path}",
        "run_name=z",
        f"train.kimg={N * BATCH / 1000}",
        f"train.batch={BATCH}",
        "data.num_workers=2",
        *zero2,
    ]
    proc = subprocess.run([PYTHON, "-m", "gandist.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "optimizer shards of 2 rank(s) but this run has 1" in proc.stderr and "ds_to_universal" in proc.stderr
    # the consolidated weights serve sampling whatever the world size
    out = tmp_path / "g.safetensors"
    run([PYTHON, "-m", "gandist", "export", str(saved), "--out", str(out)])
    import gandist

    G = gandist.load_generator(out)
    expected = torch.load(saved / "state.pt", weights_only=False)["G_ema"]
    for key, value in G.state_dict().items():
        assert torch.equal(value, expected[key]), key
