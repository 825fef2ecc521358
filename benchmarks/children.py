"""The benchmarks' child processes (`gandist train`, `gandist generate`, ...): stopped with the benchmark, cleanly.

A benchmark runs gandist's commands as children. A stop signal sent to the benchmark's process alone (`kill PID`,
a scheduler's time limit) does not reach the child, which then trains on as an orphan; and Ctrl-C, which reaches
both, made subprocess.run kill the child a quarter of a second later, before it had written its checkpoint.
`run_child` passes a stop signal on as SIGTERM (gandist's stop with a checkpoint), waits for the child to finish
and then stops the benchmark, which continues where it was when run again (every step is cached).
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from pathlib import Path

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_child(cmd: list[str], **popen_kwargs) -> int:
    """Run `cmd` to its end and return its exit status. A stop signal to this process meanwhile reaches the child
    as SIGTERM; once the child has exited, this process exits with 128 + the signal's number, saying so.
    Main thread only (signal handlers)."""
    received: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        if child and child[0].poll() is None:
            child[0].send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        child.append(subprocess.Popen(cmd, **popen_kwargs))
        if received:  # a signal came before the child existed
            child[0].send_signal(signal.SIGTERM)
        status = child[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        name, program = signal.Signals(received[0]).name, Path(sys.argv[0]).stem or "benchmark"
        print(
            f"{program}: {name}: stopped `{shlex.join(map(str, cmd))}` (exit {status}); "
            "run the same command again to continue",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + received[0])
    return status
