"""Whole tiny runs of the quality recipes in one process; `gandist evaluate` errors."""

import json
import subprocess

import pytest
import torch

from gandist.training.checkpoint import complete_checkpoints, load_checkpoint
from tests.conftest import BIN, ROOT, run, train_cmd

pytestmark = pytest.mark.slow


def test_stylegan2_conditional_wgan_gp_run_resumes_augment_and_lecam_state(tmp_path, tiny_shards):
    args = train_cmd(
        f"output_dir={tmp_path}",
        "run_name=s",
        f"data.shards={tiny_shards}",
        "model.arch=stylegan2",
        "model.num_classes=10",
        "train.loss=wgan",
        "train.gp_weight=10",
        "train.lecam_weight=0.1",
        "train.lr_warmup_kimg=0.1",
        "train.lr_decay=linear",
        "augment.ada=xflip,translate,scale,contrast",
        "augment.p=0.5",
        "augment.interval=4",
    )
    run(args)
    first, _ = load_checkpoint(complete_checkpoints(tmp_path / "s")[-1])
    p1 = first["augment"]["p"].item()
    assert p1 != 0.5 and abs(p1 - 0.5) <= 2 * 4 * 32 / 100_000 + 1e-6  # two adjustments of 128 images each
    assert first["lecam"]["ema_real"] != 0
    # resume with the config's p back at 0: one more step (no adjustment) must keep the checkpoint's p
    run([*args, "augment.p=0.0", "train.kimg=1", "train.max_steps=1"])
    second, _ = load_checkpoint(complete_checkpoints(tmp_path / "s")[-1])
    assert second["step"] == first["step"] + 1
    assert second["augment"]["p"].item() == p1
    stats = [json.loads(line) for line in (tmp_path / "s" / "stats.jsonl").read_text().splitlines()]
    assert all("loss/gp" in s and "loss/lecam" in s for s in stats)
    assert stats[0]["lr/G"] < 2e-4  # warm-up
    G_ema = second["G_ema"]
    assert any(k.endswith("noise_strength") for k in G_ema) and any("mapping" in k for k in G_ema)


def test_evaluate_says_where_the_inception_weights_go(tmp_path, tiny_shards):
    run(train_cmd(f"output_dir={tmp_path}", "run_name=e", f"data.shards={tiny_shards}", "train.kimg=0.064"))
    env = {"TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(BIN / "gandist"), "evaluate", str(tmp_path / "e")], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 2
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "inception-2015-12-05.pt") in proc.stderr
    proc = subprocess.run(
        [str(BIN / "gandist"), "evaluate", str(tmp_path / "nothing")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "nothing does not exist" in proc.stderr


def test_metrics_during_training_fail_before_training_without_weights(tmp_path, tiny_shards):
    proc = subprocess.run(
        train_cmd(f"output_dir={tmp_path}", "run_name=m", f"data.shards={tiny_shards}", "metrics.interval_kimg=0.1"),
        capture_output=True, text=True, env={"TORCH_HOME": str(tmp_path / "hub"), "PATH": ""}, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode != 0 and "inception-2015-12-05.pt" in proc.stderr
    assert not (tmp_path / "m" / "stats.jsonl").exists()  # no training step was taken


def test_the_shipped_best_recipe_trains_on_labelled_shards(tmp_path, tiny_shards):
    # configs/fashion_mnist_best.yaml as README shows it, only shortened: its keys resolve and a run steps
    run(
        train_cmd(
            f"output_dir={tmp_path}",
            "run_name=b",
            f"data.shards={tiny_shards}",
            "data.num_workers=0",
            "train.kimg=0.064",
            "train.tick_kimg=0.032",
            "train.snapshot_kimg=0.064",
            "train.grid_size=16",
            "tracking.report_to=none",  # the default, auto, would log to W&B on a machine logged in to it
            config="configs/fashion_mnist_best.yaml",
        )
    )
    state, _ = load_checkpoint(complete_checkpoints(tmp_path / "b")[-1])
    assert state["step"] == 2 and state["config"]["model"]["arch"] == "resnet"
    assert state["config"]["train"]["mode_seeking"] == "pairs"  # the mode-seeking term pair by pair
    assert state["G_ema"]["shared.weight"].shape == (10, 128)  # BigGAN's shared class embedding
    assert state["G_ema"]["blocks.0.bn1.gain.weight"].shape == (512, 128 + 32)  # [embedding, z chunk], g_width 64
    assert state["D"]["embed.weight"].shape == (10, 256)  # projection head, d_width 64, no spectral norm
    assert state["D"]["mbstd_conv.weight"].shape == (256, 257, 3, 3)  # + the std channel
    assert state["config"]["train"]["loss"] == "relativistic" and state["config"]["train"]["r1_gamma"] == 0.05
    assert state["config"]["train"]["r2_gamma"] == 0.05  # R2 on G's samples at R1's weight
    train = state["config"]["train"]
    assert train["class_weight_d"] == train["class_weight_g"] == 0  # no class loss: the projection head alone
    assert (state["config"]["G_opt"]["lr"], state["config"]["D_opt"]["lr"]) == (3.0e-4, 6.0e-4)  # D twice as fast


def test_d_steps_takes_a_g_step_every_kth_iteration_across_a_resume(tmp_path, tiny_shards):
    # train.d_steps=3: every iteration one D step on its real batch, G's step on iterations 0, 3, 6, ...
    args = train_cmd(f"output_dir={tmp_path}", "run_name=k", f"data.shards={tiny_shards}", "train.d_steps=3")
    run(args)  # 8 iterations (0.256 kimg at batch 32)
    first, _ = load_checkpoint(complete_checkpoints(tmp_path / "k")[-1])
    adam_steps = lambda state, net: int(state[f"opt_{net}"]["state"][0]["step"])  # noqa: E731
    assert first["step"] == 8 and adam_steps(first, "D") == 8 and adam_steps(first, "G") == 3  # 0, 3, 6
    # the schedule counts the run's iterations, not this job's: iteration 8 of the resumed run takes no G step
    run([*args, "train.kimg=1", "train.max_steps=1"])
    second, _ = load_checkpoint(complete_checkpoints(tmp_path / "k")[-1])
    assert second["step"] == 9 and adam_steps(second, "D") == 9 and adam_steps(second, "G") == 3
    weights = lambda state, net: [v for k, v in state[net].items() if k.endswith("weight")]  # noqa: E731
    assert all(map(torch.equal, weights(second, "G"), weights(first, "G")))  # G's weights untouched, D's moved
    assert not all(map(torch.equal, weights(second, "D"), weights(first, "D")))
    stats = [json.loads(line) for line in (tmp_path / "k" / "stats.jsonl").read_text().splitlines()]
    assert all("loss/G" in s and "loss/D" in s for s in stats[:2])  # both ticks of the first job took G steps


def test_relativistic_loss_and_a_plain_D_with_R1_R2_and_ADA_train_a_conditional_resnet(tmp_path, tiny_shards):
    # R3GAN's kind of D: the relativistic loss, no spectral norm, R1 and R2; with ADA; loader workers on (the default)
    args = train_cmd(
        f"output_dir={tmp_path}", "run_name=rp", f"data.shards={tiny_shards}", "model.arch=resnet",
        "model.num_classes=10", "train.loss=relativistic", "train.mode_seeking_weight=0.4", "train.mode_seeking=pairs",
        "model.d_spectral_norm=false", "train.r1_gamma=0.05", "train.r2_gamma=0.05", "train.r1_interval=2",
        "augment.ada=[xflip]", "augment.interval=2",
    )  # fmt: skip
    run(args)
    state, _ = load_checkpoint(complete_checkpoints(tmp_path / "rp")[-1])
    assert state["step"] == 8 and state["config"]["train"]["loss"] == "relativistic"
    assert "blocks.0.conv1.weight" in state["D"] and not any("parametrizations" in k for k in state["D"])
    stats = [json.loads(line) for line in (tmp_path / "rp" / "stats.jsonl").read_text().splitlines()]
    assert all(0 < s["loss/G"] < 10 and 0 < s["loss/D"] < 10 for s in stats)  # softplus
    assert all(s["loss/r1"] >= 0 and s["loss/r2"] >= 0 for s in stats)  # the lazy step took both penalties
    assert all(-1 <= s["augment/rt"] <= 1 for s in stats)  # the mean sign of D(real) - D(fake) over pairs
