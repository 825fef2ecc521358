"""Check a run before a launcher starts its processes: config, world size, data.

Batch scripts (slurm/) call it on the batch node so that a typo fails in seconds with a message,
not after N nodes have been allocated, started and torn down:

    python -m gandist.preflight --world-size 16 --config configs/fashion_mnist.yaml data.shards=/data/x-{0..9}.tar

Exit 0 and one line describing the run, or exit 2 and the error (naming the key, file or shard).
"""

from __future__ import annotations

import argparse
import sys

from gandist.config import ConfigError, load_config, validate


def check(config: str | None, overrides: list[str], world_size: int) -> str:
    """Load and validate the config for `world_size` processes and find its shards; return a summary line."""
    from gandist.data import DataError, expand_shards  # imports torch: only once the config is known to load

    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    cfg = load_config(config, overrides)
    validate(cfg, world_size=world_size)
    try:
        shards = expand_shards(cfg.data.shards)
    except DataError as e:
        raise ConfigError(str(e)) from e
    return (
        f"{world_size} process(es), batch {cfg.train.batch} ({cfg.train.batch // world_size}/rank), "
        f"{cfg.train.kimg} kimg, {len(shards)} shard(s)" + ("" if cfg.data.shards else " (embedded sample)")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gandist.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=1, help="number of training processes of the launch")
    parser.add_argument("--config", default=None, help="YAML file with the values that differ from the defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for gandist train")
    args = parser.parse_args(argv)
    try:
        print(f"gandist preflight: ok: {check(args.config, args.overrides, args.world_size)}")
    except (ConfigError, OSError) as e:
        print(f"gandist preflight: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
