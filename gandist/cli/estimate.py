"""Memory per rank of a run under one process, DDP and ZeRO-1/2/3, and the smallest setting that fits a device.

examples:
  gandist estimate --config configs/stylegan2_1024.yaml --world-size 8 --device-mem 80GiB
  gandist estimate --config configs/stylegan2_wide_512.yaml --world-size 1 --device-mem 80GiB train.batch=32
  gandist estimate --config configs/tiny.yaml --world-size 2 --device cpu --json

Prints the parameters of G, D and G_ema; for each strategy the bytes per rank of the model states (weights,
gradients, Adam's moments, master copies, G_ema, DeepSpeed's buckets), of the D phase, G phase and optimizer
step at the configured micro-batch, of the set-up, and the peak; with --device-mem, the first strategy
(DDP, then ZeRO-1, 2, 3) and the largest micro-batch whose peak fits, else the numbers of the closest one.
Nothing is allocated: the nets are counted on the meta device and the phases run on fake tensors (see
gandist/planning/). Not counted: the process itself (CUDA context, Python), data loader workers, metrics.
"""

from __future__ import annotations

import argparse
import json

from gandist.cli.args import add_config_arguments, error

NAME = "estimate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The estimate command's arguments."""
    parser.add_argument("--world-size", type=int, default=1, help="number of ranks (processes, one per device)")
    parser.add_argument(
        "--device-mem", default=None, metavar="SIZE", help="memory per device, e.g. 80GiB, 24GB: recommend a setting"
    )
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="what train.precision=auto resolves to: bf16 on a (recent) GPU, fp32 on the CPU",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Estimate and print."""
    from gandist.config import ConfigError, load_config
    from gandist.planning.plan import format_report, parse_bytes, plan, report_json

    try:
        if args.world_size < 1:
            raise ConfigError(f"--world-size must be at least 1, got {args.world_size}")
        cfg = load_config(args.config, args.overrides)
        precision = cfg.train.precision
        if precision == "auto":
            precision = "bf16" if args.device == "cuda" else "fp32"
        budget = parse_bytes(args.device_mem) if args.device_mem else None
        report = plan(cfg, args.world_size, precision, budget)
    except ConfigError as e:
        return error(str(e))
    print(json.dumps(report_json(report)) if args.json else format_report(report))
    return 0
