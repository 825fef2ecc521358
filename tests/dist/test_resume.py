"""Resume equals uninterrupted: N steps straight vs K steps, stop, resume, N - K steps (real processes)."""

import pytest
import torch

from gandist.training import checkpoint
from tests.conftest import PYTHON, ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow
BATCH, N, K = 32, 10, 5  # K odd: with 2 loader workers the resumed stream starts in the middle of a round


def _args(tmp_path, name, steps, extra=()):
    return [
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


def _train(world, tmp_path, name, steps, extra=()):
    args = _args(tmp_path, name, steps, extra)
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


def _state_after_load(folder, world, out):
    """What a run at `world` processes holds right after restoring `folder` (tests/dist/zero_state_after_load.py)."""
    script = ROOT / "tests/dist/zero_state_after_load.py"
    run(accelerate_cmd(script, str(folder), str(out), nproc=world) if world > 1 else [PYTHON, str(script), folder, out])
    state = torch.load(out)
    assert state.pop("world_size") == world
    return state


@pytest.mark.parametrize("stage, saved, resumed", [(2, 2, 1), (3, 1, 2)])
def test_zero_checkpoint_resumes_at_another_world_size(tmp_path, stage, saved, resumed):
    zero = ["strategy.name=deepspeed", f"strategy.zero_stage={stage}"]
    folder = _train(saved, tmp_path, "z", K, zero)
    # restored by DeepSpeed at the world size that wrote it, and through the universal checkpoint at the other:
    # the same fp32 master weights, Adam moments and steps, buffers and G_ema, parameter by parameter
    expected = _state_after_load(folder, saved, tmp_path / "same.pt")
    assert any(key.endswith(".exp_avg") for key in expected) and any(key.startswith("G_ema.") for key in expected)
    _equal(_state_after_load(folder, resumed, tmp_path / "other.pt"), expected)
    assert not (folder.parent / ".universal").exists()  # the converted copy is gone; the checkpoint is unchanged
    assert checkpoint.verify(folder)
    if resumed == 1:  # and `gandist train` at the other world size goes on from there, as a user runs it
        proc = run([PYTHON, "-m", "gandist", "train", *_args(tmp_path, "z", N, zero)])
        assert f"resumed from {folder}" in proc.stderr
        assert checkpoint.checkpoint_step(checkpoint.latest_checkpoint(tmp_path / "z")) == N
