"""Helpers for tests that start training processes, signal them and watch their run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import PYTHON, ROOT, accelerate_cmd

# The default configuration (loader workers on, the embedded data, batch 64), with small nets and short ticks so
# that a run reaches its first tick in seconds: what a user runs, at a size a test can afford.
DEFAULTS = ["model.g_width=16", "model.d_width=16", "train.tick_kimg=0.128"]


def train(*args: str) -> list[str]:
    """`python -m gandist.train` with the default config and `args`."""
    return [PYTHON, "-m", "gandist.train", *args]


def train_2proc(*args: str) -> list[str]:
    """The same under `accelerate launch` on 2 CPU processes."""
    return accelerate_cmd(ROOT / "gandist/train.py", *args)


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a command in a session of its own (its own process group, as a batch job's), output to `log`."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env, start_new_session=True
        )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stats(run_dir: Path) -> list[dict]:
    path = run_dir / "stats.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal every process of the job (launcher, ranks, loader workers), as SLURM or `kill -- -PGID` does."""
    os.killpg(proc.pid, sig)


def finish(proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """Wait for the process to end (killing its whole group if it does not) and return its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        group_kill(proc)
        raise AssertionError(f"still running after {timeout} s:\n{log.read_text()[-4000:]}") from None
    return log.read_text()


def group_kill(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the job's process group."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
