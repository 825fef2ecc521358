"""Signals as clusters deliver them: to the whole process group, with the default loader workers on.

Each run uses the default configuration (embedded data, one loader worker per rank, batch 64) with small nets.
"""

import contextlib
import signal
import sys
import threading
import time

import accelerate
import psutil
import pytest
from packaging.version import Version

from gandist.training import checkpoint
from gandist.training.stopping import REQUEUE_EXIT_CODE, REQUEUE_MARKER
from tests.conftest import BIN, ROOT, run
from tests.processes import (
    DEFAULTS,
    finish,
    group_kill,
    signal_group,
    start,
    stats,
    summary,
    train,
    train_2proc,
    wait_for,
)

pytestmark = pytest.mark.slow
NO_WORKER_DEATH = ("DataLoader worker", "Traceback", "KeyboardInterrupt")


def _stopped_cleanly(output: str, run_dir, reason: str) -> dict:
    for text in NO_WORKER_DEATH:
        assert text not in output, output[-4000:]
    said = (run_dir / REQUEUE_MARKER).read_text()
    assert reason in said or "another rank asked to stop" in said, output[-3000:]
    done = summary(run_dir)
    assert done["stopped_early"] and done["params_in_sync"]
    assert checkpoint.latest_checkpoint(run_dir).name == f"step-{done['step']:09d}"
    return done


def _before_the_launchers_traceback(output: str) -> str:
    """What the ranks printed: a signalled torchrun agent may end with a SignalException traceback of its own."""
    launcher = output.find('/accelerate", line')
    return output if launcher < 0 else output[: output.rfind("Traceback", 0, launcher)]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1", "SIGUSR2"])
def test_a_signal_to_the_process_group_checkpoints_and_asks_for_requeue(tmp_path, sig):
    run_dir, log = tmp_path / "r", tmp_path / "log"
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50"]
    proc = start(train(*args), log)
    wait_for(lambda: stats(run_dir), 180, "the first tick")
    signal_group(proc, getattr(signal, sig))
    output = finish(proc, log, 120)
    assert proc.returncode == REQUEUE_EXIT_CODE, output[-3000:]
    stopped = _stopped_cleanly(output, run_dir, f"signal {sig}")
    if sig == "SIGTERM":  # resume=auto continues the kimg count
        out = run(train(*args, f"train.kimg={stopped['kimg'] + 0.128}"))
        newest = run_dir / "checkpoints" / f"step-{stopped['step']:09d}"
        assert f"resumed from {newest}" in out.stderr
        resumed = summary(run_dir)
        assert resumed["kimg"] == pytest.approx(stopped["kimg"] + 0.128) and not resumed["stopped_early"]
        assert not (run_dir / REQUEUE_MARKER).exists()


def test_ctrl_c_stops_with_a_checkpoint_and_a_second_one_aborts(tmp_path):
    run_dir, log = tmp_path / "r", tmp_path / "log"
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50"]
    proc = start(train(*args), log)
    wait_for(lambda: stats(run_dir), 180, "the first tick")
    signal_group(proc, signal.SIGINT)
    output = finish(proc, log, 120)
    assert proc.returncode == REQUEUE_EXIT_CODE and "Ctrl-C again to abort" in output, output[-3000:]
    _stopped_cleanly(output, run_dir, "signal SIGINT")

    again = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r2", "train.kimg=50", "debug.checkpoint_delay_s=30"]
    proc = start(train(*again), log)
    wait_for(lambda: stats(tmp_path / "r2"), 180, "the first tick")
    signal_group(proc, signal.SIGINT)  # the first: a graceful stop, whose checkpoint takes 30 s here ...
    wait_for(lambda: "Ctrl-C again" in log.read_text(), 60, "the first Ctrl-C")
    time.sleep(1)
    signal_group(proc, signal.SIGINT)  # ... the second aborts at once
    output = finish(proc, log, 20)
    assert proc.returncode == 130 and "aborted" in output, output[-3000:]


def test_a_signal_to_a_two_process_launch_stops_every_rank_with_a_checkpoint(tmp_path):
    run_dir, log = tmp_path / "r", tmp_path / "log"
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50"]
    proc = start(train_2proc(*args), log)
    wait_for(lambda: stats(run_dir), 240, "the first tick")
    signal_group(proc, signal.SIGTERM)  # launcher, both ranks and their loader workers
    output = finish(proc, log, 120)
    # the ranks exit 75; the launcher, signalled itself, reports its own failure: REQUEUE tells the batch script.
    # accelerate up to 1.15 re-raises torch's SignalException (exit 1, its traceback); 1.16 on exits 128 + 15.
    assert proc.returncode == 128 + signal.SIGTERM or (proc.returncode == 1 and "SignalException" in output), (
        proc.returncode,
        output[-3000:],
    )
    worker_output = _before_the_launchers_traceback(output)
    for text in ("DataLoader worker", "[rank0]", "[rank1]"):
        assert text not in worker_output, output[-4000:]
    assert summary(run_dir)["world_size"] == 2
    _stopped_cleanly(worker_output, run_dir, "signal SIGTERM")


def test_a_signal_to_a_one_process_accelerate_launch_stops_with_a_checkpoint(tmp_path):
    """`accelerate launch gandist/train.py` with one process: accelerate's plain launcher, no torchrun agent."""
    run_dir, log = tmp_path / "r", tmp_path / "log"
    launch = [str(BIN / "accelerate"), "launch", "--num_processes=1", "--num_machines=1", "--mixed_precision=no"]
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50"]
    proc = start([*launch, "--dynamo_backend=no", str(ROOT / "gandist/train.py"), *args], log)
    wait_for(lambda: stats(run_dir), 180, "the first tick")
    signal_group(proc, signal.SIGTERM)
    finish(proc, log, 120)
    # accelerate up to 1.15 dies at once and leaves the trainer to stop on its own; 1.16 on passes SIGTERM on
    # and kills the trainer 5 s later, whatever it is doing: the run says so when it starts
    wait_for(lambda: (run_dir / "summary.json").is_file(), 120, "the trainer's summary")
    output = log.read_text()
    _stopped_cleanly(output, run_dir, "signal SIGTERM")
    cuts_short = Version(accelerate.__version__) >= Version("1.16")
    assert ("kills it 5 s after a SIGTERM" in output) == cuts_short, output[-3000:]
    assert ("run `gandist train ...`" in output) == cuts_short


def test_a_stalled_shard_ends_in_an_error_naming_it(tmp_path):
    log = tmp_path / "log"
    shard = "pipe:sleep 300"
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", f"data.shards={shard}", "data.timeout_s=3"]
    proc = start(train(*args), log)
    output = finish(proc, log, 120)
    assert proc.returncode == 2, output[-3000:]
    assert f"shard {shard} delivered no data for 3 s (data.timeout_s)" in output
    assert "Traceback" not in output


def test_a_stop_is_honoured_while_a_rank_waits_for_data(tmp_path, tiny_shards):
    run_dir, log = tmp_path / "r", tmp_path / "log"
    stall = tmp_path / "STALL"
    good = tiny_shards.replace("{000000..000003}", "000000")
    # rank 1's shard stalls once STALL exists; rank 0 then waits for it in the step's vote
    shard = f"pipe:bash -c 'if [ \"$RANK\" = 1 ] && [ -e {stall} ]; then exec sleep 300; fi; cat {good}'"
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50", f"data.shards={shard}"]
    proc = start(train_2proc(*args, "train.batch=16", "data.shuffle_buffer=0"), log)
    wait_for(lambda: stats(run_dir), 240, "the first tick")
    stall.touch()
    time.sleep(10)  # rank 1 uses up what its worker had read, then waits for the stalled shard
    before = len(stats(run_dir))
    signal_group(proc, signal.SIGTERM)
    output = finish(proc, log, 120)
    stopped = _stopped_cleanly(_before_the_launchers_traceback(output), run_dir, "signal SIGTERM")
    assert len(stats(run_dir)) >= before and stopped["world_size"] == 2


def test_a_signal_after_done_does_not_fail_a_finished_run(tmp_path):
    log = tmp_path / "log"
    proc = start(train(*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=0.256"), log)

    def signal_when_done():
        while proc.poll() is None:
            if "gandist: done at" in log.read_text():
                signal_group(proc, signal.SIGTERM)
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=signal_when_done)
    watcher.start()
    output = finish(proc, log, 180)
    watcher.join()
    assert proc.returncode == 0, output[-3000:]
    assert not (tmp_path / "r" / REQUEUE_MARKER).exists()


def test_ranks_whose_launcher_died_stop_with_a_checkpoint(tmp_path):
    run_dir, log = tmp_path / "r", tmp_path / "log"
    proc = start(train_2proc(*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50"), log)
    wait_for(lambda: stats(run_dir), 240, "the first tick")
    ranks = [p for p in psutil.Process(proc.pid).children() if any("train.py" in part for part in p.cmdline())]
    assert len(ranks) == 2
    proc.kill()  # the launcher alone, with SIGKILL: its ranks are left behind
    proc.wait()
    try:
        wait_for(
            lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks), 120, "the ranks"
        )
    finally:
        for p in ranks:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert "signal SIGTERM" in (run_dir / REQUEUE_MARKER).read_text()  # the kernel's word that the launcher died
    assert summary(run_dir)["stopped_early"]


def test_a_second_job_on_the_same_run_folder_is_refused_naming_the_holder(tmp_path):
    run_dir, log = tmp_path / "r", tmp_path / "log"
    args = [*DEFAULTS, f"output_dir={tmp_path}", "run_name=r", "train.kimg=50"]
    first = start(train(*args), log)
    try:
        wait_for(lambda: stats(run_dir), 180, "the first tick")
        second = run(train(*args), check=False)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "in use by another job" in second.stderr
        assert second.stderr.count("gandist: error") == 1
        first.kill()  # a job that dies without cleaning up: the next one takes the lock over
        first.wait()
    finally:
        group_kill(first)
    out = run(train(*args, "train.kimg=0.384"))
    assert "took over the lock" in out.stderr and summary(run_dir)["kimg"] == pytest.approx(0.384)


if sys.platform != "linux":  # process groups, prctl and /proc are Linux's
    pytestmark = [pytestmark, pytest.mark.skip(reason="Linux only")]


def test_an_error_that_every_rank_meets_is_printed_once(tmp_path):
    proc = run(train_2proc(f"output_dir={tmp_path}", "train.batchsize=3"), check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "gandist: error:" in line]
    assert len(lines) == 1 and "train.batchsize" in lines[0]
    # the launcher's own report (torch elastic's ChildFailedError traceback) is all; no rank prints a traceback
    tracebacks = proc.stderr.split("Traceback (most recent call last):")[1:]
    assert all(t.lstrip().startswith('File "') and "accelerate" in t.splitlines()[1] for t in tracebacks)
    assert "/gandist/" not in "".join(line for line in proc.stderr.splitlines(True) if line.lstrip().startswith("File"))
