"""Check a run before a launcher starts its processes: config, world size, data.

examples:
  gandist preflight --world-size 16 --config configs/fashion_mnist.yaml data.shards=/data/x-{0..9}.tar

Batch scripts (slurm/) call it on the batch node so that a typo fails in seconds with a message,
not after N nodes have been allocated, started and torn down. Exit 0 and one line describing the
run, or exit 2 and the error (naming the key, file or shard).
"""

from __future__ import annotations

import argparse

from gandist.cli.args import add_config_arguments

NAME = "preflight"


def check(config: str | None, overrides: list[str], world_size: int) -> str:
    """Load and validate the config for `world_size` processes and find its shards; return a summary line."""
    from gandist.config import ConfigError, load_config
    from gandist.data.specs import DataError, expand_shards
    from gandist.strategy import check_batch

    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    cfg = load_config(config, overrides)
    check_batch(cfg.train.batch, world_size, cfg.strategy.gradient_accumulation or 1)
    try:
        shards = expand_shards(cfg.data.shards)
    except DataError as e:
        raise ConfigError(str(e)) from e
    return (
        f"{world_size} process(es), batch {cfg.train.batch} ({cfg.train.batch // world_size}/rank), "
        f"{cfg.train.kimg} kimg, {len(shards)} shard(s)" + ("" if cfg.data.shards else " (embedded sample)")
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The preflight command's arguments."""
    parser.add_argument("--world-size", type=int, default=1, help="number of training processes of the launch")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Print one line describing the run (errors: one line from the dispatcher, exit 2)."""
    print(f"gandist preflight: ok: {check(args.config, args.overrides, args.world_size)}")
    return 0
