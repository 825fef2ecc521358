"""Trackers through accelerate from real 2-process training runs: W&B (offline, no account, no network),
MLflow (its local file store) and TensorBoard; one tracker run per job from rank 0, continued across resumes."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

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
NO_CREDENTIALS = {"WANDB_MODE": None, "WANDB_API_KEY": None, "MLFLOW_TRACKING_URI": None}


def _train_2proc(tmp_path, name, *args):
    cmd = [
        "--config",
        str(ROOT / "configs/tiny.yaml"),
        f"output_dir={tmp_path}",
        f"run_name={name}",
        "train.checkpoint_kimg=0.128",
        *args,
    ]
    proc = run(accelerate_cmd(ROOT / "gandist/train.py", *cmd), env={**NO_CREDENTIALS, "HOME": str(tmp_path)})
    output = proc.stdout + proc.stderr
    assert "Setting accelerator" not in output  # DeepSpeed is installed, but a DDP run does not import it
    return output


def _drop_last_checkpoint(run_dir):
    """As if the job had been killed after its checkpoint at 0.128 kimg but after logging later ticks."""
    (last,) = [p for p in (run_dir / "checkpoints").iterdir() if p.name == "step-000000008"]
    shutil.rmtree(last)


def test_two_process_wandb_run_is_one_run_resumes_the_same_id_and_replays_no_tick(tmp_path):
    output = _train_2proc(tmp_path, "wb", "tracking.report_to=wandb", "tracking.tags=[test]")
    assert "wandb sync" in output
    run_dir = tmp_path / "wb"
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # rank 1 created no run
    first = read_offline_run(runs[0])
    keys = set().union(*first.history)
    assert SCALARS <= keys, SCALARS - keys
    fakes = [row["samples/fakes"] for row in first.history if "samples/fakes" in row]
    assert [f["caption"] for f in fakes] == ["G_ema at 0.000 kimg", "G_ema at 0.128 kimg", "G_ema at 0.256 kimg"]
    assert all((runs[0] / "files" / f["path"]).is_file() for f in fakes)
    assert "samples/reals" in keys and len(list((runs[0] / "files" / "media" / "images").rglob("*.png"))) >= 3
    assert first.config["train"]["kimg"] == 0.256 and first.config["env"]["world_size"] == 2
    assert first.config["model"]["g_width"] == 8
    steps = [row["_step"] for row in first.history]
    assert steps == sorted(steps) and max(steps) == 256  # steps are images shown

    # the job "dies" after its 0.128 kimg checkpoint; the next one replays 0.192 and 0.256 and goes on to 0.384
    _drop_last_checkpoint(run_dir)
    _train_2proc(tmp_path, "wb", "tracking.report_to=wandb", "tracking.tags=[test]", "train.kimg=0.384")
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    second = read_offline_run(runs[1])
    assert second.run_id == first.run_id
    assert [row["progress/kimg"] for row in second.history if "loss/D" in row] == [0.384]
    assert json.loads((run_dir / "tracking.json").read_text())["run_id"] == first.run_id


def test_two_process_mlflow_and_tensorboard_runs_log_scalars_images_and_config(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    both = ["tracking.report_to=mlflow,tensorboard", "tracking.project=tiny", "tracking.notes=hello"]
    _train_2proc(tmp_path, "mt", *both)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == "mt" and mlrun.data.tags["mlflow.note.content"] == "hello"
    assert SCALARS <= set(mlrun.data.metrics)
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "loss/D")] == [128, 256]
    params = mlrun.data.params
    assert params["train.kimg"] == "0.256" and params["env.world_size"] == "2" and params["model.g_width"] == "8"
    images = [a.path for a in client.list_artifacts(mlrun.info.run_id, "images") if a.path.endswith(".png")]
    assert sum("samples~fakes+step+" in p for p in images) == 3 and sum("samples~reals" in p for p in images) == 1

    tb = EventAccumulator(str(tmp_path / "mt" / "tiny"))
    tb.Reload()
    tags = tb.Tags()
    assert SCALARS <= set(tags["scalars"]) and {"samples/fakes", "samples/reals"} <= set(tags["images"])
    assert [e.step for e in tb.Scalars("loss/D")] == [128, 256]  # images shown: the step axis reads as kimg
    assert [e.step for e in tb.Images("samples/fakes")] == [0, 128, 256]
    config_text = tb.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    train:\n      kimg: 0.256\n" in config_text and "world_size: 2" in config_text
    hparams = list((tmp_path / "mt" / "tiny").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "train.kimg: 0.256" in hparams[0].read_text()

    # resumed after a lost checkpoint: the same MLflow run, no tick twice, the first job's parameters kept
    _drop_last_checkpoint(tmp_path / "mt")
    _train_2proc(tmp_path, "mt", *both, "train.kimg=0.384")
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == mlrun.info.run_id and again.data.params["train.kimg"] == "0.256"
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "loss/D")] == [128, 256, 384]
    config = yaml.safe_load(
        Path(client.download_artifacts(mlrun.info.run_id, "config.yaml", str(tmp_path))).read_text()
    )
    assert config["train"]["kimg"] == 0.384  # this job's whole config
    tb = EventAccumulator(str(tmp_path / "mt" / "tiny"))
    tb.Reload()
    assert [e.step for e in tb.Scalars("loss/D")] == [128, 256, 384]


def test_wandb_disabled_is_respected(tmp_path):
    run(
        train_cmd(f"output_dir={tmp_path}", "run_name=off", "tracking.report_to=wandb"),
        env={"WANDB_MODE": "disabled"},
    )
    assert not list((tmp_path / "off").glob("wandb/offline-run-*"))
    assert (tmp_path / "off" / "stats.jsonl").is_file()


def test_auto_without_credentials_starts_no_tracker_and_says_how(tmp_path):
    proc = run(
        train_cmd(f"output_dir={tmp_path}", "run_name=auto", "tracking.report_to=auto", "train.max_steps=1"),
        env={**NO_CREDENTIALS, "HOME": str(tmp_path)},
    )
    lines = [line for line in proc.stderr.splitlines() if "tracker" in line]
    assert lines == [
        "gandist: no experiment tracker (no W&B credentials): `wandb login` to log to W&B, or set "
        "tracking.report_to=wandb (offline), tensorboard, mlflow, ..."
    ]
    assert not (tmp_path / "auto" / "wandb").exists() and not (tmp_path / "auto" / "tracking.json").exists()
