"""The benchmarks' cached gandist runs: how far one has trained, and whether it is the run a command asks for.

quality.py and augmentation.py keep each `gandist train` run under --work and reuse it once it has reached
--kimg (a shorter one is continued). A run is known by its folder's name, so a folder trained with another
recipe (the config file changed since, other key=value overrides) would be reported as this command's, or
continued with a second recipe. `trained_kimg` compares the config the command would train with against the
run's config.yaml and stops the benchmark with one line naming the key when they differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gandist.config import ConfigError, load_config, to_yaml
from gandist.reporting.trackers import flatten

# keys that say how long a job runs and where it writes, not what it trains
NOT_THE_RECIPE = ("train.kimg", "train.max_steps", "train.checkpoint_kimg", "train.keep_checkpoints", "tracking.",
                  "resume", "output_dir", "run_name")  # fmt: skip


def trained_kimg(run_dir: Path, config: Path, overrides: list[str], program: str) -> float:
    """The kimg the run in `run_dir` has reached (0 for none), after checking that it was trained with what
    `gandist train --config CONFIG *OVERRIDES` would train: a difference stops the benchmark, naming the run, the key
    and both values. Keys the run's config.yaml lacks (added to gandist since) count as their defaults."""
    saved_path = run_dir / "config.yaml"
    if saved_path.is_file():
        saved = flatten(yaml.safe_load(saved_path.read_text()) or {})
        try:
            asked = flatten(yaml.safe_load(to_yaml(load_config(config, overrides))))
        except ConfigError as error:  # a mistyped key: said once, as `gandist train` would
            raise SystemExit(f"{program}: {error}") from None
        for key, value in asked.items():
            if key in saved and saved[key] != value and not key.startswith(NOT_THE_RECIPE):
                raise SystemExit(
                    f"{program}: {run_dir} was trained with {key}={saved[key]!r}, this command asks for {value!r}: "
                    "move the folder aside to train it again with this recipe"
                )
    summary = run_dir / "summary.json"
    return float(json.loads(summary.read_text())["kimg"]) if summary.is_file() else 0.0


def train_seconds(run_dir: Path) -> float:
    """Training time of a run from its stats (all its jobs, without start-up)."""
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    return round(sum(s["sec_per_kimg"] * (s["kimg"] - p["kimg"]) for p, s in zip([{"kimg": 0}] + stats, stats)), 1)
