"""Measure a trained generator: FID / KID / precision / recall / coverage of a run's checkpoint (and per-class
recall and, with metrics.classifier, class fidelity for a class-conditional generator).

examples:
  gandist evaluate runs/NAME                                  # newest complete checkpoint, G_ema
  gandist evaluate runs/NAME/checkpoints/step-000001000 metrics.num_fake=50000
  gandist evaluate runs/NAME metrics.feature_net=/path/net.pt2 metrics.reference=/data/test-{000000..000004}.tar
  gandist evaluate runs/NAME metrics.classifier=/path/classifier.pt2      # class fidelity (conditional G)
  accelerate launch --config_file launch/gpus_1node.yaml -m gandist.cli evaluate runs/NAME   # GPUs share the work

What G is comes from the config saved in the checkpoint; the metrics section (and the reference set:
metrics.reference, else data.shards) come from that config too, changed by --config FILE (a YAML of
differences, e.g. a metrics section) and key=value overrides.
Rank 0 prints one JSON line and appends it to <run>/metrics-eval.jsonl.
"""

from __future__ import annotations

import argparse
import json

from gandist.cli.args import add_config_arguments

NAME = "evaluate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate command's arguments."""
    add_config_arguments(parser, (("target", "a run folder (its newest complete checkpoint) or a checkpoint folder"),))
    parser.add_argument("--net", choices=["G_ema", "G"], default="G_ema", help="which generator to measure")
    parser.add_argument("--seed", type=int, default=None, help="seed of the generated images (default: train.seed)")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the result as one JSON line (rank 0)."""
    from gandist.metrics.evaluate import evaluate

    record = evaluate(args.target, args.overrides, args.net, args.seed, config_file=args.config)
    if record is not None:
        print(json.dumps(record))
    return 0
