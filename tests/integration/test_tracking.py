"""W&B (offline, no account, no network) and TensorBoard from real training runs."""

import json

import pytest

from tests.conftest import ROOT, accelerate_cmd, run, train_cmd
from tests.wandb_offline import read_offline_run

pytestmark = pytest.mark.slow

SCALARS = {
    "progress/kimg",
    "progress/step",
    "loss/D",
    "loss/G",
    "score/real",
    "score/fake",
    "grad_norm/D",
    "grad_norm/G",
    "lr/D",
    "lr/G",
    "perf/images_per_s",
    "perf/sec_per_kimg",
    "perf/data_wait_frac",
}


def test_two_process_wandb_run_is_one_run_and_resumes_the_same_id(tmp_path):
    args = [
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"output_dir={tmp_path}",
        "run_name=wb",
        "tracking.report_to=wandb",
        "tracking.tags=[test]",
    ]
    env = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path)}  # no key anywhere: offline by itself
    proc = run(accelerate_cmd(ROOT / "gandist/train.py", *args), env=env)
    assert "wandb sync" in proc.stderr + proc.stdout
    run_dir = tmp_path / "wb"
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # rank 1 created no run
    first = read_offline_run(runs[0])
    keys = set().union(*first.history)
    assert SCALARS <= keys, SCALARS - keys
    assert {"samples/fakes", "samples/reals"} <= keys
    fakes = [row["samples/fakes"] for row in first.history if "samples/fakes" in row]
    assert [f["caption"] for f in fakes] == ["G_ema at 0.000 kimg", "G_ema at 0.128 kimg", "G_ema at 0.256 kimg"]
    assert all((runs[0] / "files" / f["path"]).is_file() for f in fakes)
    images = list((runs[0] / "files" / "media" / "images").rglob("*.png"))
    assert len(images) >= 3  # reals + fakes at 0, 0.128, 0.256 kimg
    assert first.config["train"]["kimg"] == 0.256 and first.config["env"]["world_size"] == 2
    assert first.config["model"]["g_width"] == 8
    steps = [row["_step"] for row in first.history]
    assert steps == sorted(steps)

    # resume the same run folder with a bigger budget: same W&B id, later steps only
    run(accelerate_cmd(ROOT / "gandist/train.py", *args, "train.kimg=0.384"), env=env)
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    second = read_offline_run(runs[1])
    assert second.run_id == first.run_id
    kimgs = [row["progress/kimg"] for row in second.history if "loss/D" in row]
    assert kimgs and min(kimgs) > max(row["progress/kimg"] for row in first.history if "loss/D" in row)
    state = json.loads((run_dir / "tracking.json").read_text())
    assert state["run_id"] == first.run_id


def test_wandb_disabled_is_respected(tmp_path):
    run(
        train_cmd(f"output_dir={tmp_path}", "run_name=off", "tracking.report_to=wandb"),
        env={"WANDB_MODE": "disabled"},
    )
    assert not list((tmp_path / "off").glob("wandb/offline-run-*"))
    assert (tmp_path / "off" / "stats.jsonl").is_file()


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    run(train_cmd(f"output_dir={tmp_path}", "run_name=tb", "tracking.report_to=tensorboard"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events.parent))
    acc.Reload()
    assert {"loss/D", "loss/G", "perf/images_per_s"} <= set(acc.Tags()["scalars"])
    assert "samples/fakes" in acc.Tags()["images"]
