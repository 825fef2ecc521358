"""`gandist evaluate`: FID / KID / precision / recall / coverage (and for class-conditional generators per-class
recall and class fidelity) of a checkpoint's generator.

What G is comes from the config saved in the checkpoint; the metrics section (and the reference set:
metrics.reference, else data.shards) come from that config too, changed by key=value overrides.
Every rank of a launch generates and embeds a share; rank 0 appends one line to <run>/metrics-eval.jsonl.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gandist.config import Config, ConfigError, apply_file, apply_overrides, from_dict, keys_given
from gandist.metrics.evaluator import Evaluator
from gandist.metrics.reference import ReferenceSpec
from gandist.models import build_generator
from gandist.strategy import Strategy, make_accelerator
from gandist.training.checkpoint import find_checkpoint, load_checkpoint, net_state
from gandist.training.ema import refresh_batchnorm_stats


def evaluate(
    target: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    net: str = "G_ema",
    seed: int | None = None,
    config_file: str | Path | None = None,
) -> dict | None:
    """Compute the metrics of a checkpoint's generator in this process (one rank of a launch). Collective.

    The checkpoint's saved config, changed by `config_file` (a YAML of differences) and then `overrides`,
    says what G is and how to measure it. Rank 0 appends the record to the run's metrics-eval.jsonl and
    returns it; other ranks return None.
    """
    folder = find_checkpoint(target)
    shared, _ = load_checkpoint(folder, rank=None)
    cfg = from_dict(shared["config"], f"config saved in {folder}")
    if config_file is not None:
        apply_file(cfg, config_file)
    apply_overrides(cfg, overrides)
    cfg.validate()
    refuse_stored_commands(cfg, keys_given(config_file, overrides), folder)
    strategy = Strategy(make_accelerator(cfg.strategy), "fp32")
    try:
        m = cfg.model
        G = build_generator(m)
        G.load_state_dict(net_state(folder, shared, net))
        G = G.to(strategy.device).eval()
        if net == "G_ema":  # as the training loop does before using G_ema (a no-op for its own checkpoints)
            refresh_batchnorm_stats(G, m.z_dim, m.num_classes, strategy.device, seed=cfg.train.seed)
        reference = ReferenceSpec.of(cfg.metrics, cfg.metrics.reference or cfg.data.shards, m.resolution, m.channels)
        say = (lambda text: print(text, file=sys.stderr)) if strategy.is_main else (lambda text: None)
        evaluator = Evaluator(cfg.metrics, reference, strategy, say)
        results = evaluator(G, m.z_dim, m.num_classes, seed=cfg.train.seed if seed is None else seed)
        record = {"checkpoint": str(folder), "kimg": round(shared["nimg"] / 1000, 3), "net": net, **results}
        if not strategy.is_main:
            return None
        with (folder.parent.parent / "metrics-eval.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record
    finally:
        strategy.close()


def refuse_stored_commands(cfg: Config, given: set[str], folder: Path) -> None:
    """Refuse to run what a checkpoint's stored config would run as code (a `pipe:` shard command, a feature net
    built by importing a module) unless this user gave that setting: a run downloaded from elsewhere must not run
    commands by being evaluated."""
    reference_key = "metrics.reference" if cfg.metrics.reference else "data.shards"
    reference = cfg.metrics.reference or cfg.data.shards
    if "pipe:" in reference and reference_key not in given:
        raise ConfigError(
            f"the config saved in {folder} reads the reference images with a shell command ({reference_key}="
            f"{reference!r}); gandist evaluate runs no command that came with a checkpoint: pass "
            f"metrics.reference=... yourself (shards, or that pipe: command if you trust it)"
        )
    for key in ("feature_net", "classifier"):
        net = getattr(cfg.metrics, key)
        if "@" in net and ":" in net.split("@", 1)[0] and f"metrics.{key}" not in given:
            raise ConfigError(
                f"the config saved in {folder} builds its {key.replace('_', ' ')} by importing code (metrics.{key}="
                f"{net!r}); gandist evaluate imports nothing a checkpoint names: pass metrics.{key}=... yourself"
            )
