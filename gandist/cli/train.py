r"""Train a GAN: the same command runs on one CPU, several CPU processes, one GPU or many nodes.

examples:
  # one process (CPU or one GPU), default config: DCGAN on the embedded Fashion-MNIST sample
  gandist train                                            # or: python -m gandist.train
  gandist train --config configs/fashion_mnist.yaml train.kimg=100 run_name=try1
  # two CPU processes (gloo)
  accelerate launch --config_file launch/cpu_2proc.yaml gandist/train.py --config configs/fashion_mnist.yaml
  # all GPUs of a node
  accelerate launch --config_file launch/gpus_1node.yaml gandist/train.py \
      --config configs/fashion_mnist.yaml train.kimg=200
  # 2 nodes (run on each node with its machine rank; see slurm/ for SLURM)
  accelerate launch --config_file launch/multinode.yaml --machine_rank $NODE_RANK --main_process_ip $HEAD \
      gandist/train.py --config configs/fashion_mnist.yaml

Overrides are key.sub=value (e.g. train.kimg=10 output_dir=runs run_name=try1), before or after --config.
`gandist config [SECTION|KEY]` lists the keys with their types, defaults and meanings.
Exit status: 0 done; 75 stopped early (signal, stop file, time budget) and asking to be requeued (REQUEUE in
the run folder); 2 bad input (config, data, checkpoint, run folder); 3 training diverged (NaN/Inf); 130 aborted
by a second Ctrl-C; 1 a crash (GANDIST_DEBUG=1 shows the traceback).
"""

from __future__ import annotations

import argparse

from gandist.cli.args import add_config_arguments

NAME = "train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train command's arguments."""
    add_config_arguments(parser)
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config (YAML, each key explained) and exit"
    )


def run(args: argparse.Namespace) -> int:
    """Load the config and train (or print it); errors are reported by the dispatcher (args.report)."""
    from gandist.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        from gandist.config_docs import commented_yaml

        print(commented_yaml(cfg), end="")
        return 0
    from gandist.training.loop import train
    from gandist.training.stopping import REQUEUE_EXIT_CODE

    result = train(cfg)
    return REQUEUE_EXIT_CODE if result.stopped_early else 0
