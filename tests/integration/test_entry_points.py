"""Whole tiny trainings through each entry point users have."""

import json

import pytest
from PIL import Image

from gandist.training.checkpoint import latest_checkpoint
from tests.conftest import BIN, PYTHON, ROOT, run, train_cmd

pytestmark = pytest.mark.slow


def _check_run(run_dir, grid_size=16):
    assert (run_dir / "config.yaml").is_file()
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert stats and stats[-1]["kimg"] >= 0.256
    assert all(k in stats[-1] for k in ("loss/D", "loss/G", "images_per_s", "score/real", "score/fake"))
    grids = sorted((run_dir / "samples").glob("fakes-*.png"))
    assert len(grids) >= 2
    with Image.open(grids[-1]) as im:
        assert im.size == (4 * 34 + 2, 4 * 34 + 2)  # 4 x 4 tiles of 32 px with 2 px padding
    assert latest_checkpoint(run_dir) is not None
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 1


@pytest.mark.parametrize(
    "entry",
    [
        [PYTHON, "-m", "gandist.train"],
        [str(BIN / "gandist"), "train"],
        [PYTHON, "-m", "gandist", "train"],
    ],
    ids=["python-m-gandist.train", "gandist-train", "python-m-gandist"],
)
def test_entry_point_trains(entry, tmp_path, tiny_shards):
    run(
        [
            *entry,
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            f"output_dir={tmp_path}",
            "run_name=r",
            f"data.shards={tiny_shards}",
        ]
    )
    _check_run(tmp_path / "r")


def test_accelerate_launch_one_process_on_embedded_data(tmp_path):
    run(
        [
            str(BIN / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "launch/gpu_1.yaml"),
            "--cpu",
            str(ROOT / "gandist/train.py"),
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            f"output_dir={tmp_path}",
            "run_name=r",
        ]
    )
    _check_run(tmp_path / "r")


@pytest.mark.parametrize("entry", [[PYTHON, "-m", "gandist.train"], [PYTHON, "-m", "gandist", "train"]])
def test_overrides_may_come_before_the_config_file(entry):
    out = run(
        [*entry, "train.kimg=3", "--config", str(ROOT / "configs/tiny.yaml"), "model.channels=3", "--print-config"]
    ).stdout
    assert "kimg: 3.0" in out and "channels: 3" in out and "g_width: 8" in out


def test_resolved_config_is_saved_and_printed(tmp_path):
    out = run([PYTHON, "-m", "gandist.train", "--print-config", "train.kimg=3", "model.channels=3"]).stdout
    assert "kimg: 3.0" in out and "channels: 3" in out


def test_config_error_exits_2_naming_the_key(tmp_path):
    import subprocess

    proc = subprocess.run(
        [PYTHON, "-m", "gandist.train", "train.batchsize=3"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "train.batchsize" in proc.stderr


def test_resume_auto_continues_the_kimg_count(tmp_path, tiny_shards):
    args = train_cmd(f"output_dir={tmp_path}", "run_name=r", f"data.shards={tiny_shards}")
    run(args)
    run([*args, "train.kimg=0.512"])
    stats = [json.loads(line) for line in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    kimgs = [s["kimg"] for s in stats]
    assert kimgs == sorted(kimgs) and kimgs[-1] >= 0.512 and len(set(kimgs)) == len(kimgs)


def test_a_resumed_run_keeps_checkpoints_and_grids_at_multiples_of_their_intervals(tmp_path, tiny_shards):
    """A job stopped between marks (a requeue at 96 images) checkpoints at 128, 192, 256 when it resumes,
    as an uninterrupted run would, not at 96 + 64 + 64 (the curves of benchmarks/quality.py and anyone's
    "checkpoint every 20 kimg" rely on it)."""
    args = train_cmd(
        f"output_dir={tmp_path}",
        "run_name=r",
        f"data.shards={tiny_shards}",
        "train.checkpoint_kimg=0.064",
        "train.snapshot_kimg=0.064",
        "train.keep_checkpoints=100",
    )
    run([*args, "train.kimg=0.096"])
    run([*args, "train.kimg=0.256"])
    steps = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "r" / "checkpoints").glob("step-*"))
    assert steps == [2, 3, 4, 6, 8]  # 64 images, the first job's end (96), then 128, 192 and 256
    grids = sorted(p.name for p in (tmp_path / "r" / "samples").glob("fakes-*.png"))
    kimgs = [float(name[len("fakes-") : -len("kimg.png")]) for name in grids]
    assert [k for k in kimgs if k > 0.096] == [0.128, 0.192, 0.256]
