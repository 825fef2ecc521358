"""Train a GAN. The same script runs on one CPU, several CPU processes, one GPU or many nodes.

    # one process (CPU or one GPU), default config: DCGAN on the embedded Fashion-MNIST sample
    python -m gandist.train                                  # or: gandist train
    # two CPU processes (gloo)
    accelerate launch --config_file launch/cpu_2proc.yaml gandist/train.py --config configs/fashion_mnist.yaml
    # all GPUs of a node
    accelerate launch --config_file launch/gpus_1node.yaml gandist/train.py \
        --config configs/fashion_mnist.yaml train.kimg=200
    # 2 nodes (run on each node with its machine rank; see slurm/ for SLURM)
    accelerate launch --config_file launch/multinode.yaml --machine_rank $NODE_RANK --main_process_ip $HEAD \
        gandist/train.py --config configs/fashion_mnist.yaml

Overrides are `key.sub=value` (e.g. train.kimg=10 output_dir=runs run_name=try1);
`--print-config` prints the resolved config and exits.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments (shared by `gandist train` and this script)."""
    parser.add_argument("--config", default=None, help="YAML file with the values that differ from the defaults")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.kimg=10")


def run(args: argparse.Namespace) -> int:
    """Load the config and train (or print it)."""
    from gandist.config import ConfigError, load_config, to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"gandist: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from gandist.loop import train
    from gandist.preemption import REQUEUE_EXIT_CODE

    try:
        result = train(cfg)
    except ConfigError as e:
        print(f"gandist: config error: {e}", file=sys.stderr)
        return 2
    return REQUEUE_EXIT_CODE if result.stopped_early else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gandist train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_intermixed_args(argv))  # overrides may stand before or after --config


if __name__ == "__main__":
    sys.exit(main())
