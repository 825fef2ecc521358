"""Faults with real processes on CPU: signals, NaN on one rank, a failing rank, kill -9 mid-save."""

import json
import re
import signal
import subprocess
import time

import psutil
import pytest
import torch

from gandist.training import checkpoint
from gandist.training.stopping import REQUEUE_EXIT_CODE, REQUEUE_MARKER
from tests.conftest import PYTHON, ROOT, accelerate_cmd, run
from tests.processes import stats, wait_for

pytestmark = pytest.mark.slow
TINY = ["--config", str(ROOT / "configs/tiny.yaml")]


def _start(cmd, log):
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)


def _workers(proc):
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "gandist/train.py" in " ".join(p.cmdline())]


@pytest.mark.parametrize("sig", ["SIGUSR1", "SIGTERM"])
def test_signal_to_two_process_run_checkpoints_and_asks_for_requeue(tmp_path, sig):
    run_dir = tmp_path / "pre"
    args = [*TINY, f"output_dir={tmp_path}", "run_name=pre", "train.kimg=200", "faults.check_every=2"]
    with open(tmp_path / "log", "w") as log:
        proc = _start(accelerate_cmd(ROOT / "gandist/train.py", *args), log)
        try:
            wait_for(lambda: len(stats(run_dir)) >= 1, 120, "the first tick")
            if sig == "SIGTERM":  # what SLURM or a user sends to the launcher: it passes it on to the ranks
                proc.send_signal(signal.SIGTERM)
            else:  # SIGUSR1 straight to the ranks (torchrun does not forward USR1)
                for worker in _workers(proc):
                    worker.send_signal(signal.SIGUSR1)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = (tmp_path / "log").read_text()
    assert (run_dir / REQUEUE_MARKER).is_file(), output[-3000:]
    assert f"signal {sig}" in (run_dir / REQUEUE_MARKER).read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_early"] and summary["params_in_sync"] and summary["kimg"] < 200
    if sig == "SIGUSR1":  # the launcher itself was not signalled: it reports the ranks' exit codes
        assert re.search(rf"exitcode\s*:\s*{REQUEUE_EXIT_CODE}", output), output[-3000:]
    stopped_at = summary["step"]
    assert checkpoint.latest_checkpoint(run_dir).name == f"step-{stopped_at:09d}"

    # the resumed run continues the kimg count from the checkpoint
    run([PYTHON, "-m", "gandist.train", *args, f"train.kimg={summary['kimg'] + 0.128}"])
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["step"] > stopped_at and not resumed["stopped_early"]
    assert not (run_dir / REQUEUE_MARKER).exists()


def test_single_process_exit_code_and_stop_file(tmp_path):
    run_dir = tmp_path / "s"
    with open(tmp_path / "log", "w") as log:
        proc = _start(
            [
                PYTHON,
                "-m",
                "gandist.train",
                *TINY,
                f"output_dir={tmp_path}",
                "run_name=s",
                "train.kimg=200",
                "faults.check_every=1",
            ],
            log,
        )
        wait_for(lambda: len(stats(run_dir)) >= 1, 120, "the first tick")
        (run_dir / "STOP").touch()
        assert proc.wait(timeout=120) == REQUEUE_EXIT_CODE
    assert "stop file" in (run_dir / REQUEUE_MARKER).read_text()


def test_time_budget_stops_with_requeue_code(tmp_path):
    proc = subprocess.run(
        [
            PYTHON,
            "-m",
            "gandist.train",
            *TINY,
            f"output_dir={tmp_path}",
            "run_name=t",
            "train.kimg=200",
            "faults.stop_after_minutes=0.05",
            "faults.check_every=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == REQUEUE_EXIT_CODE, proc.stderr[-2000:]
    assert "stop_after_minutes" in (tmp_path / "t" / REQUEUE_MARKER).read_text()


def test_nan_on_one_rank_is_skipped_by_all(tmp_path):
    run(
        accelerate_cmd(
            ROOT / "gandist/train.py",
            *TINY,
            f"output_dir={tmp_path}",
            "run_name=nan",
            "debug.nan_at_steps=[2,5]",
            "debug.nan_rank=1",
        )
    )
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["skipped_steps"] == 2 and summary["rollbacks"] == 0
    assert summary["params_in_sync"]
    ticks = stats(tmp_path / "nan")
    assert sum(s["faults/nonfinite_frac"] for s in ticks) > 0
    assert all(s["loss/D"] == s["loss/D"] for s in ticks)  # the skipped losses are not averaged in (no NaN)


def test_persistent_nan_rolls_back_then_stops_with_a_clear_error(tmp_path):
    args = [
        *TINY,
        f"output_dir={tmp_path}",
        "run_name=bad",
        "train.kimg=2",
        "train.checkpoint_kimg=0.064",
        "faults.max_bad_steps=3",
        "faults.max_rollbacks=1",
        f"debug.nan_at_steps=[{','.join(map(str, range(4, 40)))}]",
    ]
    proc = subprocess.run([PYTHON, "-m", "gandist.train", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "rolled back to" in proc.stderr and "(#1)" in proc.stderr
    assert "consecutive steps with NaN/Inf" in proc.stderr and "after 1 rollback(s)" in proc.stderr


def test_a_failing_rank_ends_the_job_quickly_and_is_named(tmp_path):
    t0 = time.monotonic()
    proc = subprocess.run(
        accelerate_cmd(
            ROOT / "gandist/train.py",
            *TINY,
            f"output_dir={tmp_path}",
            "run_name=f",
            "train.kimg=200",
            "debug.fail_at_step=3",
            "debug.fail_rank=1",
            "strategy.timeout_s=60",
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 90
    assert "gandist: error: rank 1: RuntimeError: debug.fail_at_step=3" in proc.stderr + proc.stdout


def test_kill_during_checkpoint_write_resumes_from_the_previous_one(tmp_path):
    run_dir = tmp_path / "k"
    args = [
        *TINY,
        f"output_dir={tmp_path}",
        "run_name=k",
        "train.kimg=200",
        "train.checkpoint_kimg=0.128",
        "debug.checkpoint_delay_s=2",
    ]
    with open(tmp_path / "log", "w") as log:
        proc = _start(accelerate_cmd(ROOT / "gandist/train.py", *args), log)
        try:
            folder = run_dir / "checkpoints"
            wait_for(
                lambda: len(checkpoint.complete_checkpoints(run_dir)) >= 1 and list(folder.glob(".step-*.tmp")),
                180,
                "a complete checkpoint and a second one being written",
            )
            for p in [*_workers(proc), psutil.Process(proc.pid)]:
                p.kill()  # SIGKILL: no handler runs
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    complete = checkpoint.complete_checkpoints(run_dir)
    partial = list((run_dir / "checkpoints").glob(".step-*.tmp"))
    assert complete and partial
    newest_complete = complete[-1]
    shared, _ = checkpoint.load_checkpoint(newest_complete)
    out = run([PYTHON, "-m", "gandist.train", *args[:-2], f"train.kimg={shared['nimg'] / 1000 + 0.064}"])
    assert f"resumed from {newest_complete}" in out.stderr + out.stdout
    assert not list((run_dir / "checkpoints").glob(".step-*.tmp"))  # the partial one was cleaned up


def test_incompatible_checkpoint_is_refused_naming_the_mismatch(tmp_path):
    args = [PYTHON, "-m", "gandist.train", *TINY, f"output_dir={tmp_path}", "run_name=c"]
    run(args)
    proc = subprocess.run([*args, "model.g_width=16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "model.g_width: checkpoint 8, config 16" in proc.stderr


def test_world_size_change_resumes_under_ddp(tmp_path):
    args = [*TINY, f"output_dir={tmp_path}", "run_name=w"]
    run(accelerate_cmd(ROOT / "gandist/train.py", *args))
    two = torch.load(checkpoint.latest_checkpoint(tmp_path / "w") / "state.pt", weights_only=False)
    out = run([PYTHON, "-m", "gandist.train", *args, "train.kimg=0.384"])
    assert "resumed from" in out.stderr
    one = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1 and one["step"] > two["step"]
