"""benchmarks/step_speed.py on CPU: the plain loop and gandist's step side by side, and the summary's arithmetic."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.conftest import PYTHON, ROOT, run

pytestmark = pytest.mark.slow


def test_summary_ratios_come_from_the_runs_it_printed():
    cmd = [PYTHON, str(ROOT / "benchmarks/step_speed.py"), "--batch", "8", "--steps", "2", "--warmup", "1"]
    out = run([*cmd, "--repeats", "2", "--skip-train", "--threads", "1"], timeout=600).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    runs, summary = lines[:-1], lines[-1]
    assert [(r["repeat"], r["mode"]) for r in runs] == [(0, "plain"), (0, "synthetic"), (1, "synthetic"), (1, "plain")]
    ips = {m: [r["images_per_s"] for r in runs if r["mode"] == m] for m in ("plain", "synthetic")}
    assert all(v > 0 for vs in ips.values() for v in vs)
    median = {m: statistics.median(v) for m, v in ips.items()}
    assert summary["ratio_synthetic_to_plain"] == pytest.approx(median["synthetic"] / median["plain"], abs=2e-3)
    best = max(ips["synthetic"]) / max(ips["plain"])
    assert summary["ratio_best_synthetic_to_plain"] == pytest.approx(best, abs=2e-3)
    low, high = summary["ratio_synthetic_to_plain_range"]
    paired = [s / p for s, p in zip(ips["synthetic"], ips["plain"])]
    assert low == pytest.approx(min(paired), abs=2e-3) and high == pytest.approx(max(paired), abs=2e-3)
    assert summary["synthetic_param_mib"] == pytest.approx(6.6, abs=0.1)  # DCGAN 32 px, width 64: as plain_gan.py


def test_ddp_on_two_processes_runs_beside_zero():
    """--strategy ddp --nproc 2: each rank's worker used to re-check the arguments and refuse its own launch."""
    cmd = [PYTHON, str(ROOT / "benchmarks/step_speed.py"), "--strategy", "ddp", "--nproc", "2", "--skip-train"]
    out = run([*cmd, "--batch", "4", "--steps", "1", "--warmup", "1", "--repeats", "1"], timeout=600).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["synthetic_world_size"] == 2 and summary["synthetic_strategy"] == "ddp"
    assert summary["synthetic_images_per_s"] > 0
