"""Stopping early on request: signals, a stop file, a wall-time budget, a launcher that died; all ranks agree.

Signals reach every process of a job at once (the launcher's agent, `kill -TERM -<pgid>`, SLURM and
Kubernetes signal whole process groups): the trainer of each rank takes them, its DataLoader workers
ignore them (stream.py). The handler only notes the request, except

- while the rank waits for data (a stalled shard), where it interrupts the wait: the rank then has
  no batch, takes no step, and stops with the others after its last completed step;
- on a second Ctrl-C, which aborts at once (the first one stops gracefully, like SIGTERM).

Before every step the ranks vote (a CPU all-reduce: no device sync) whether any of them wants to stop,
so they all stop after the same step, save a checkpoint and exit with `REQUEUE_EXIT_CODE`. The stop
file and the time budget are looked at every `check_every` steps. Rank 0 also writes `REQUEUE` into
the run folder: launchers such as torchrun report their own exit code, so batch scripts look for the
file (see slurm/).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from gandist.files import atomic_write_text

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
REQUEUE_MARKER = "REQUEUE"
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")
_PR_SET_PDEATHSIG = 1
ANOTHER_RANK = "another rank asked to stop"


class StopWhileWaiting(Exception):
    """A stop was requested while this rank waited for data: it has no batch for the next step."""


class StopRequested:
    """Collects stop requests on this rank and turns them into one decision for all ranks."""

    def __init__(self, stop_file: Path | None, stop_after_minutes: float, check_every: int):
        self.stop_file = stop_file
        self.deadline = time.monotonic() + stop_after_minutes * 60 if stop_after_minutes > 0 else None
        self.check_every = max(1, check_every)
        self.signal_name: str | None = None
        self.reason: str | None = None
        self._waiting = False
        self._interrupts = 0
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Trap the stop signals (main thread only; elsewhere signals cannot be trapped)."""
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        """Give the signals back to the handlers that were there before."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt  # the second Ctrl-C: abort now
            if os.environ.get("RANK", "0") == "0":
                print("gandist: Ctrl-C: stopping with a checkpoint; Ctrl-C again to abort", file=sys.stderr, flush=True)
        self.signal_name = self.signal_name or name
        if self._waiting:
            raise StopWhileWaiting(name)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """A wait (for data) that a stop request interrupts with StopWhileWaiting."""
        if self.signal_name:
            raise StopWhileWaiting(self.signal_name)
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def local_reason(self, step: int) -> str | None:
        """Why this rank wants to stop before `step`, or None (the stop file and the clock every check_every)."""
        if self.signal_name or step % self.check_every == 0:
            return self.own_reason()
        return None

    def own_reason(self) -> str | None:
        """Why this rank wants to stop now, or None: a signal, the stop file, the clock."""
        if self.signal_name:
            return f"signal {self.signal_name}"
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop file {self.stop_file}"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "stop_after_minutes reached"
        return None

    def vote(self, step: int, any_rank) -> bool:
        """Collective (every rank, before every step): True on all ranks if any rank wants to stop.

        `any_rank(flag)` is the strategy's CPU all-reduce of a flag.
        """
        local = self.local_reason(step)
        if any_rank(local is not None):
            self.reason = local or ANOTHER_RANK
            return True
        return False

    def why(self) -> str:
        """Why the agreed stop happened, for the requeue marker and the log. When the vote told this rank of
        another rank's request, this rank's own reason if it has one by now: a dying launcher signals every
        rank at once, and a stop file on a shared filesystem can appear between two ranks' looks at it, so
        the vote may see the other rank's request first."""
        if self.reason == ANOTHER_RANK:
            return self.own_reason() or ANOTHER_RANK
        return self.reason or "stop requested"


def stop_with_parent() -> bool:
    """Under a launcher, ask the kernel for SIGTERM when the launcher dies (Linux): a rank whose launcher was
    killed then checkpoints and stops instead of training on as an orphan. True if that was arranged."""
    if not any(k in os.environ for k in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")) or not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def launcher_cuts_stops_short() -> str | None:
    """A warning when this process runs under `accelerate launch`'s one-process launcher from accelerate 1.16 on.

    That launcher (the one without a torchrun agent) answers SIGTERM by passing it to its child and killing the
    child's whole process tree 5 s later, whatever it is doing: a stop whose checkpoint takes longer is lost (a cut
    checkpoint stays a temporary folder, never loaded). Earlier versions die at once and leave the trainer to stop
    on its own; torchrun's agent (every launch of 2+ processes) waits 30 s."""
    if "ACCELERATE_USE_CPU" not in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return None  # set by accelerate's plain launcher for its child; torchrun's workers have a run id
    try:
        parent = psutil.Process().parent()
        cmdline = parent.cmdline() if parent is not None else []
    except psutil.Error:
        return None
    if "launch" not in cmdline or not any("accelerate" in Path(arg).name for arg in cmdline[:3]):
        return None
    version = importlib.metadata.version("accelerate")
    if tuple(int(n) for n in re.findall(r"\d+", version)[:2]) < (1, 16):
        return None
    return (
        f"gandist: warning: accelerate launch {version} with one process kills it 5 s after a SIGTERM,"
        " which can cut a stop's checkpoint short: for one process run `gandist train ...` (or python -m"
        " gandist.train ...), which takes the signal itself"
    )


def clear_stale_stop_file(path: Path, started: float) -> bool:
    """Remove a stop file older than this job (left by an earlier stop); True if there was one."""
    try:
        if path.stat().st_mtime < started:
            path.unlink()
            return True
    except FileNotFoundError:
        pass
    return False


def write_requeue_marker(run_dir: Path, reason: str, kimg: float) -> None:
    """Tell a batch script that this run stopped early and wants to be resumed."""
    atomic_write_text(run_dir / REQUEUE_MARKER, f"{reason} at {kimg:.3f} kimg (pid {os.getpid()})\n")


def clear_requeue_marker(run_dir: Path) -> None:
    """Remove the marker of an earlier early stop (this job starts afresh)."""
    (run_dir / REQUEUE_MARKER).unlink(missing_ok=True)
