"""Output written to a file (a SLURM .out file, CI): plain lines, no carriage returns, progress of long jobs."""

import json
import os
import subprocess

import pytest
import torch

from tests.conftest import BIN, ROOT, train_cmd

pytestmark = pytest.mark.slow


def _run_into_file(cmd, log):
    """Run with stdout and stderr both going to one file, as `sbatch --output` does; returns the file's text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=300, env=env, cwd=ROOT)
    text = log.read_bytes().decode()
    assert proc.returncode == 0, text[-4000:]
    return text


def test_a_run_logged_to_a_file_has_one_plain_line_per_tick_and_evaluate_shows_progress(tmp_path, tiny_shards):
    from tests.unit.test_metrics import TinyFeatures

    text = _run_into_file(
        train_cmd(f"output_dir={tmp_path}", "run_name=r", f"data.shards={tiny_shards}", "train.tick_kimg=0.064"),
        tmp_path / "train.out",
    )
    assert "\r" not in text
    ticks = [line for line in text.splitlines() if " kimg (" in line]
    stats = (tmp_path / "r" / "stats.jsonl").read_text().splitlines()
    assert len(ticks) == len(stats) == 4, text
    assert ticks[-1].startswith("gandist: 0.256/0.256 kimg (100%) | step 8 | ") and " elapsed, " in ticks[-1]
    assert len(set(text.splitlines())) == len(text.splitlines())  # nothing repeated

    net = tmp_path / "tiny-features.pt"
    torch.jit.save(torch.jit.script(TinyFeatures()), str(net))
    text = _run_into_file(
        [
            str(BIN / "gandist"),
            "evaluate",
            str(tmp_path / "r"),
            f"metrics.feature_net={net}",
            "metrics.num_fake=300",
            "metrics.kid_subset_size=50",
            f"metrics.stats_cache={tmp_path / 'stats'}",
        ],
        tmp_path / "evaluate.out",
    )
    assert "\r" not in text and "not writable" not in text and "Warning" not in text, text
    lines = text.splitlines()
    assert any(line.startswith("gandist: reference statistics: 96/96 images in ") for line in lines), text
    assert any(line.startswith("gandist: generating and embedding fakes: 300/300 images in ") for line in lines), text
    assert "metrics/fid_tiny-features" in json.loads(lines[-1])
