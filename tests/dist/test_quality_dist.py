"""Real 2-process CPU runs (gloo) of the quality features: regularisers under DDP, distributed metrics."""

import json

import pytest
import torch

from tests.conftest import BIN, ROOT, accelerate_cmd, run

pytestmark = pytest.mark.slow


def _feature_net(tmp_path):
    from tests.unit.test_metrics import TinyFeatures

    torch.manual_seed(0)
    path = tmp_path / "tiny-features.pt"
    torch.jit.save(torch.jit.script(TinyFeatures()), str(path))
    return path


def _classifier(tmp_path):
    from tests.unit.test_class_metrics import Brightness

    path = tmp_path / "classifier.pt"
    torch.jit.save(torch.jit.script(Brightness()), str(path))
    return path


def test_conditional_regularized_augmented_run_on_two_ranks_and_distributed_evaluation(tmp_path, tiny_shards):
    net = _feature_net(tmp_path)
    metrics = [
        "metrics.interval_kimg=0.128",
        f"metrics.feature_net={net}",
        f"metrics.classifier={_classifier(tmp_path)}",
        "metrics.num_fake=150",
        "metrics.kid_subsets=5",
        "metrics.kid_subset_size=50",
        f"metrics.stats_cache={tmp_path / 'stats'}",
    ]
    run(
        accelerate_cmd(
            ROOT / "gandist/train.py",
            "--config",
            str(ROOT / "configs/tiny.yaml"),
            f"output_dir={tmp_path}",
            "run_name=q",
            f"data.shards={tiny_shards}",
            "model.arch=resnet",
            "model.num_classes=10",
            "train.loss=hinge",
            "train.r1_gamma=1.0",
            "train.r1_interval=2",
            "train.lecam_weight=0.3",
            "train.gp_weight=1.0",
            "train.consistency_weight=1.0",
            "train.class_weight_d=0.5",
            "train.class_weight_g=0.5",
            "train.mode_seeking_weight=0.2",
            "train.d_steps=2",  # G steps on even steps only: DDP's ranks still agree
            "augment.diffaugment=color,translation,cutout",
            "augment.ada=xflip,rotate90,translate,scale,rotate,brightness,contrast,cutout",
            "augment.p=0.2",
            "augment.interval=2",
            *metrics,
        )
    )
    run_dir = tmp_path / "q"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["params_in_sync"] is True
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    regularisers = (
        "loss/r1",
        "loss/lecam",
        "loss/gp",
        "loss/consistency",
        "loss/class_D",
        "loss/class_G",
        "class_acc/real",
        "loss/mode_seeking",
    )
    for key in (*regularisers, "augment/p", "augment/rt", "grad_norm/D_r1"):
        assert all(key in s and s[key] == s[key] for s in stats), key  # present and not NaN
    assert stats[-1]["augment/p"] != 0.2  # p was steered
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["kimg"] for m in lines] == [0.128, 0.256]
    assert stats[-1]["metrics/fid_tiny-features"] == pytest.approx(lines[-1]["metrics/fid_tiny-features"], rel=1e-4)

    # the same checkpoint measured by one process and by two: the same images, so the same numbers
    overrides = [o for o in metrics if not o.startswith("metrics.interval")]
    one = json.loads(run([str(BIN / "gandist"), "evaluate", str(run_dir), *overrides]).stdout.strip().splitlines()[-1])
    two_out = run(accelerate_cmd("-m", "gandist.cli", "evaluate", str(run_dir), *overrides)).stdout
    two = json.loads(two_out.strip().splitlines()[-1])
    per_class = [k for k in lines[-1] if k.startswith(("metrics/class_fidelity/", "metrics/class_recall_"))]
    assert len(per_class) == 2 * 10 + 1 and "metrics/class_fidelity_min" in lines[-1]  # 10 classes
    overall = [f"metrics/{key}_tiny-features" for key in ("fid", "kid", "precision", "recall", "coverage")]
    for name in overall + per_class:
        assert two[name] == pytest.approx(one[name], rel=1e-4, abs=1e-7, nan_ok=True), name
        assert one[name] == pytest.approx(lines[-1][name], rel=1e-4, abs=1e-7, nan_ok=True), name  # as in training
    assert len((run_dir / "metrics-eval.jsonl").read_text().splitlines()) == 2
