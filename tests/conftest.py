"""Shared helpers: tiny shard fixtures and launch commands for real multi-process runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_cmd(script: str | Path, *args: str, nproc: int = 2) -> list[str]:
    """`accelerate launch` of `script` on `nproc` CPU processes (gloo), on a free port."""
    return [
        str(BIN / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "launch/cpu_2proc.yaml"),
        "--num_processes",
        str(nproc),
        "--main_process_port",
        str(free_port()),
        str(script),
        *args,
    ]


def train_cmd(*args: str, config: str = "configs/tiny.yaml") -> list[str]:
    """`python -m gandist.train --config <config> *args`: one training run in this process's Python."""
    return [PYTHON, "-m", "gandist.train", "--config", str(ROOT / config), *args]


def run(
    cmd: list[str], timeout: float = 300, env: dict | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a command; unless `check` is False, fail the test with its output if it exits non-zero."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset the variable
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


@pytest.fixture
def tiny_shards(tmp_path: Path) -> str:
    """Four shards of 32 px grey images with labels (random blobs), as a brace pattern."""
    from gandist.data.shards import write_shards

    rng = np.random.default_rng(0)
    samples = [((rng.random((32, 32)) * 255).astype(np.uint8), i % 10) for i in range(96)]
    write_shards(samples, tmp_path / "shards", "tiny", shard_size=24, fmt="png", meta={"resolution": 32, "channels": 1})
    return str(tmp_path / "shards" / "tiny-{000000..000003}.tar")
