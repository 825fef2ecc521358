"""Stopping early on request: signals, a stop file, a wall-time budget; all ranks agree.

SIGTERM, SIGUSR1 and SIGUSR2 only set a flag (the handler does no I/O). Every
`check_every` steps the ranks all-reduce (max) their flags, so they all stop after the same step,
save a checkpoint and exit with `REQUEUE_EXIT_CODE`. Rank 0 also writes `REQUEUE` into the run
folder: launchers such as torchrun report their own exit code, so batch scripts look for the
file (see slurm/).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gandist.files import atomic_write_text

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
REQUEUE_MARKER = "REQUEUE"
SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class StopRequested:
    """Collects stop requests on this rank and turns them into one decision for all ranks."""

    def __init__(self, stop_file: Path | None, stop_after_minutes: float, check_every: int):
        self.stop_file = stop_file
        self.deadline = time.monotonic() + stop_after_minutes * 60 if stop_after_minutes > 0 else None
        self.check_every = max(1, check_every)
        self.signal_name: str | None = None
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Trap the stop signals (main thread only; elsewhere signals cannot be trapped)."""
        for name in SIGNALS:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, _frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def local_reason(self) -> str | None:
        """Why this rank wants to stop, or None."""
        if self.signal_name:
            return f"signal {self.signal_name}"
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop file {self.stop_file}"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "stop_after_minutes reached"
        return None

    def should_stop(self, step: int, reduce_max: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> bool:
        """Collective (every rank must call it at the same steps): True on all ranks if any rank wants to stop."""
        if step % self.check_every:
            return False
        local = self.local_reason()
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        if reduce_max(flag).item() > 0:
            self.reason = local or "another rank asked to stop"
            return True
        return False


def write_requeue_marker(run_dir: Path, reason: str, kimg: float) -> None:
    """Tell a batch script that this run stopped early and wants to be resumed."""
    atomic_write_text(run_dir / REQUEUE_MARKER, f"{reason} at {kimg:.3f} kimg (pid {os.getpid()})\n")


def clear_requeue_marker(run_dir: Path) -> None:
    """Remove the marker of an earlier early stop (this job starts afresh)."""
    (run_dir / REQUEUE_MARKER).unlink(missing_ok=True)
