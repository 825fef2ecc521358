"""Whole tiny trainings on the fast-path settings: torch.compile (a cheap backend on CPU) and channels_last."""

import importlib.util
import json

import pytest

from gandist.training.checkpoint import latest_checkpoint, load_checkpoint
from tests.conftest import run, train_cmd

pytestmark = pytest.mark.slow


def _train(tmp_path, shards, *overrides):
    return run(train_cmd(f"output_dir={tmp_path}", "run_name=r", f"data.shards={shards}", *overrides))


def test_compiled_run_trains_resumes_and_keeps_plain_checkpoint_keys(tmp_path, tiny_shards):
    compiled = ["train.compile=true", "train.compile_backend=aot_eager", "train.channels_last=true"]
    proc = _train(tmp_path, tiny_shards, *compiled, "train.r1_gamma=1", "train.r1_interval=2")
    assert "compiled (aot_eager)" in proc.stderr and "channels_last" in proc.stderr
    assert "WARNING train.compile" not in proc.stderr  # R1's double backward runs eager, the rest compiled
    shared, _ = load_checkpoint(latest_checkpoint(tmp_path / "r"))
    for name in ("G", "D", "G_ema"):
        assert not [k for k in shared[name] if "_orig_mod" in k]
    _train(tmp_path, tiny_shards, *compiled, "train.r1_gamma=1", "train.r1_interval=2", "train.kimg=0.384")
    stats = [json.loads(line) for line in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["kimg"] >= 0.384 and all(s["loss/G"] == s["loss/G"] for s in stats)


def test_a_compiler_that_fails_warns_once_and_the_run_trains_eager(tmp_path, tiny_shards):
    # torch's tvm backend fails at the first compiled call when Apache TVM is not installed, as a compiler would
    if importlib.util.find_spec("tvm") is not None:
        pytest.skip("tvm is installed: the backend would compile")
    proc = _train(tmp_path, tiny_shards, "train.compile=true", "train.compile_backend=tvm")
    warnings = [line for line in proc.stderr.splitlines() if "WARNING train.compile failed" in line]
    assert len(warnings) == 1 and "tvm" in warnings[0]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["step"] == 8


def test_an_unknown_compile_backend_is_a_config_error(tmp_path, tiny_shards):
    with pytest.raises(AssertionError, match=r"train.compile_backend.*'indcutor'"):
        _train(tmp_path, tiny_shards, "train.compile=true", "train.compile_backend=indcutor")
