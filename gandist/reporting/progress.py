"""What rank 0 shows and writes while it works: `stats.jsonl`, the training progress, messages, progress of
finite jobs (reference statistics, evaluation).

On a terminal progress is a live bar (tqdm). Anywhere else (a SLURM `.out` file, CI, captured notebook
output) a bar would write a carriage-return update every second and repeat its last line when messages
interleave, so progress is plain lines instead: one per training tick, and one every few seconds of a
finite job.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    """Whether a stream is an interactive terminal (a live bar), rather than a file, a pipe or a notebook."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Reporter:
    """Writes `stats.jsonl` and shows the training progress; does nothing on ranks other than 0.

    `stream` (default stderr) gets the bar on a terminal, else one plain line per tick.
    """

    def __init__(
        self, run_dir: Path, total_kimg: float, start_kimg: float, enabled: bool, stream: TextIO | None = None
    ):
        self.enabled = enabled
        self.stats_path = run_dir / "stats.jsonl"
        self.stream = stream or sys.stderr
        self.total, self.start_kimg = total_kimg, start_kimg
        self.start_time: float | None = None  # the first step: start-up time would skew the estimate of what is left
        self.bar = None
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(
                total=round(total_kimg, 3),
                initial=round(start_kimg, 3),
                unit="kimg",
                dynamic_ncols=True,
                file=self.stream,
                mininterval=1.0,
                bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]",
            )

    def advance(self, kimg: float) -> None:
        """Move the bar to `kimg` (cheap; called every step)."""
        if self.start_time is None:
            self.start_time = time.perf_counter()
        if self.bar is None:
            return
        target = min(round(kimg, 3), self.bar.total)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
            self.bar.n = target  # summed float increments would drift past the total (tqdm then warns)

    def tick(self, record: dict) -> None:
        """Append one line to stats.jsonl; show the losses on the bar, or print the tick as one line."""
        if not self.enabled:
            return
        with self.stats_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        losses = {key.split("/")[1]: record[key] for key in ("loss/D", "loss/G") if key in record}
        if self.bar is not None:
            shown = {"img/s": f"{record.get('images_per_s', 0):.0f}", **{k: f"{v:.3f}" for k, v in losses.items()}}
            self.bar.set_postfix(shown, refresh=True)
        else:
            self.message(self.tick_line(record))

    def tick_line(self, record: dict) -> str:
        """A tick as one line: progress, speed, losses, time so far and left."""
        kimg = record.get("kimg", 0.0)
        elapsed = time.perf_counter() - (self.start_time or time.perf_counter())
        done = kimg - self.start_kimg
        left = elapsed / done * (self.total - kimg) if done > 0 else 0.0
        losses = " ".join(f"{k} {record[f'loss/{k}']:.3f}" for k in ("D", "G") if f"loss/{k}" in record)
        return (
            f"gandist: {kimg:.3f}/{self.total:.3f} kimg ({100 * kimg / self.total:.0f}%) | step {record.get('step', 0)}"
            f" | {record.get('images_per_s', 0):.0f} img/s"
            + (f" | {losses}" if losses else "")
            + f" | {_clock(elapsed)} elapsed, {_clock(left)} left"
        )

    def message(self, text: str) -> None:
        """A line of text (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            tqdm.write(text, file=self.stream)  # above the bar, with the bar and the warnings
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar (its last state stays on the terminal)."""
        if self.bar is not None:
            self.bar.close()


class Steps:
    """Progress of one finite job, e.g. "reference statistics: 2,560/6,000 images"; shown only where `enabled`.

    A bar (left behind when done) on a terminal, else a line at most every `every_s` seconds and one at the end.
    `total` may be None when unknown.
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str = "images",
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = 10.0,
    ):
        self.what, self.total, self.unit, self.enabled = what, total, unit, enabled
        self.stream = stream or sys.stderr
        self.every_s, self.n = every_s, 0
        self.start = self.last = time.perf_counter()
        self.bar = None
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(
                total=total,
                desc=f"gandist: {what}",
                unit=unit[:-1] if unit.endswith("s") else unit,
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def update(self, n: int) -> None:
        """`n` more done."""
        if not self.enabled:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.perf_counter() - self.last >= self.every_s:
            self.last = time.perf_counter()
            self._line()

    def _line(self, end: str = "") -> None:
        of = f"/{self.total:,}" if self.total else ""
        print(f"gandist: {self.what}: {self.n:,}{of} {self.unit}{end}", file=self.stream, flush=True)

    def close(self) -> None:
        """The end: the bar goes, a file gets one last line with the time taken."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(f" in {time.perf_counter() - self.start:.1f} s")
        self.enabled = False

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
