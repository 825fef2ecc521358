"""benchmarks/memory.py: each strategy trains on 2 gloo ranks, checkpoints, and stands beside its estimate."""

from __future__ import annotations

import json

import pytest

from tests.conftest import PYTHON, ROOT, run

pytestmark = pytest.mark.slow


def test_measured_rows_stand_beside_the_planner_estimates():
    tiny = ["model.channel_base=256", "model.channel_max=32", "model.z_dim=32"]
    cmd = [PYTHON, str(ROOT / "benchmarks/memory.py"), "--strategies", "ddp,zero3", "--steps", "1", "--checkpoint"]
    out = run([*cmd, "--set", *tiny], timeout=900).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rows, summary = lines[:-1], lines[-1]
    assert [(r["strategy"], r["rank"]) for r in rows] == [("ddp", 0), ("ddp", 1), ("zero3", 0), ("zero3", 1)]
    for r in rows:
        assert r["peak_gib"] > 0 and r["peak_est_gib"] > 0 and r["save_s"] >= 0 and r["load_s"] >= 0
        assert r["ratio"] > 0  # measured / estimated peak (the figures above are rounded to MiB)
    assert summary["rows"] == 4 and summary["params"]["G"] > 0
    assert summary["max_ratio_error"] == pytest.approx(max(abs(r["ratio"] - 1) for r in rows), abs=2e-3)
