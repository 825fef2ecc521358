"""The run folder's lock: whose lock counts as held, and whose is taken over."""

import json
import socket
import subprocess
import sys
import time

import psutil
import pytest

from gandist.training import lock
from gandist.training.lock import RunLock, RunLocked

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc is Linux's")


def _hold(run_dir, pid):
    run_dir.mkdir(exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": pid, "process_start": lock._process_start(pid), "started": "then"}
    (run_dir / lock.LOCK_NAME).write_text(json.dumps(holder) + "\n")


def test_a_live_holder_keeps_its_lock(tmp_path):
    with subprocess.Popen(["sleep", "60"]) as holder:
        try:
            _hold(tmp_path, holder.pid)
            with pytest.raises(RunLocked, match=f"pid {holder.pid}"):
                RunLock(tmp_path).acquire()
        finally:
            holder.kill()


def test_the_lock_of_a_dead_holder_that_nobody_reaped_is_taken_over(tmp_path):
    """A SIGKILLed job whose parent died first stays a zombie until init reaps it, and in a container
    whose init does not reap, for ever: its pid answers signal 0, but the job is gone."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _hold(tmp_path, holder.pid)
        holder.kill()  # not waited on: a zombie until the end of this test
        deadline = time.monotonic() + 10
        while psutil.Process(holder.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the killed process never became a zombie"
            time.sleep(0.01)
        held = RunLock(tmp_path)
        assert "took over the lock" in held.acquire()
        held.release()
    finally:
        holder.wait()
