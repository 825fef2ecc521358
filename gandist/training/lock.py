"""One run folder, one job: a lock file that a second job on the same run refuses, naming the holder.

`runs/NAME/LOCK` holds the holder's host, pid, process start time, SLURM job id and start time; rank 0
creates it (exclusively) before anything is written and keeps its modification time fresh from a
background thread. A lock is taken over when its holder is dead: on this host, when the pid is gone, a
zombie, or another process now; anywhere, when it was not refreshed for STALE_S seconds; and always by a
requeued SLURM job with the holder's job id.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from gandist.config import ConfigError

LOCK_NAME = "LOCK"
HEARTBEAT_S = 15.0
STALE_S = 90.0


class RunLocked(ConfigError):
    """Another job holds the run folder."""


def _stat(pid: int, field: int) -> str | None:
    """One field of /proc/PID/stat, counted from the state (field 3 of proc(5)); None if unreadable."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[field]
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc), to tell a live holder from a reused pid."""
    return _stat(pid, 19)


def _alive(holder: dict, age_s: float) -> bool:
    """Whether the lock's holder may still be running."""
    if os.environ.get("SLURM_JOB_ID") and holder.get("slurm_job") == os.environ["SLURM_JOB_ID"]:
        return False  # this job, requeued: its earlier run is over
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if _stat(pid, 0) in ("Z", "X"):
            return False  # killed, not yet reaped (for ever, under an init that does not reap): gone
        started = holder.get("process_start")
        return started is None or _process_start(pid) in (None, started)
    return age_s < STALE_S


class RunLock:
    """The lock of one run folder, held by this process until release()."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise RunLocked naming the holder. Returns a note if a dead holder's lock was taken."""
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        note = None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder, age = self._read()
                if _alive(holder, age):
                    raise RunLocked(
                        f"run folder {self.path.parent} is in use by another job (host {holder.get('host')}, pid "
                        f"{holder.get('pid')}, since {holder.get('started')}): wait for it to end, stop it, or use "
                        f"another run_name; if that job is gone, remove {self.path}"
                    ) from None
                note = f"took over the lock of a job that is gone (host {holder.get('host')}, pid {holder.get('pid')})"
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            self._thread = threading.Thread(target=self._beat, daemon=True, name="gandist run lock")
            self._thread.start()
            return note
        raise RunLocked(f"could not take the lock {self.path}: another job took it at the same time")

    def _read(self) -> tuple[dict, float]:
        try:
            age = time.time() - self.path.stat().st_mtime
            return json.loads(self.path.read_text() or "{}"), age
        except (OSError, ValueError):
            return {}, STALE_S  # unreadable or half-written: treat as stale only by age

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Let the next job have the run folder."""
        self._stop.set()
        if self._thread is not None:
            self.path.unlink(missing_ok=True)
            self._thread = None


def process_started() -> float:
    """When this process started (wall-clock seconds): what "older than this job" means for a stop file."""
    try:
        ticks = int(_process_start(os.getpid()) or "")
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line[:5] == "btime")
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration):
        return time.time()
