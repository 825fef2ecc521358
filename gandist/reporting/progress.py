"""What rank 0 shows and writes once per tick: a line in `stats.jsonl`, the progress bar, messages above it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm


class Reporter:
    """Writes `stats.jsonl` and drives the progress bar; does nothing on ranks other than 0."""

    def __init__(self, run_dir: Path, total_kimg: float, start_kimg: float, enabled: bool):
        self.enabled = enabled
        self.stats_path = run_dir / "stats.jsonl"
        self.bar = None
        if enabled:
            self.bar = tqdm(
                total=round(total_kimg, 3),
                initial=round(start_kimg, 3),
                unit="kimg",
                dynamic_ncols=True,
                file=sys.stderr,
                mininterval=1.0,
                bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]",
            )

    def advance(self, kimg: float) -> None:
        """Move the bar to `kimg` (cheap; called every step)."""
        if self.bar is None:
            return
        target = min(round(kimg, 3), self.bar.total)
        if target > self.bar.n:
            self.bar.update(target - self.bar.n)
            self.bar.n = target  # summed float increments would drift past the total (tqdm then warns)

    def tick(self, record: dict) -> None:
        """Append one line to stats.jsonl and show the losses on the bar."""
        if not self.enabled:
            return
        with self.stats_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            shown = {"img/s": f"{record.get('images_per_s', 0):.0f}"}
            for key in ("loss/D", "loss/G"):
                if key in record:
                    shown[key.split("/")[1]] = f"{record[key]:.3f}"
            self.bar.set_postfix(shown, refresh=True)

    def message(self, text: str) -> None:
        """A line of text above the bar."""
        if self.enabled:
            tqdm.write(text, file=sys.stderr)  # above the bar, with the bar and the warnings

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
