"""Measure a trained generator: FID / KID / precision / recall of a run's checkpoint.

    gandist evaluate runs/NAME                                  # newest complete checkpoint, G_ema
    gandist evaluate runs/NAME/checkpoints/step-000001000 metrics.num_fake=50000
    gandist evaluate runs/NAME metrics.feature_net=/path/net.pt2 metrics.reference=/data/test-{000000..000004}.tar
    accelerate launch --config_file launch/gpus_1node.yaml gandist/evaluation.py runs/NAME   # GPUs share the work

What G is comes from the config saved in the checkpoint; the metrics section (and the reference set:
metrics.reference, else data.shards) come from that config too, changed by key=value overrides.
Rank 0 prints one JSON line and appends it to <run>/metrics-eval.jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate command's arguments (shared by `gandist evaluate` and this script)."""
    parser.add_argument("target", help="a run folder (its newest complete checkpoint) or a checkpoint folder")
    parser.add_argument("--net", choices=["G_ema", "G"], default="G_ema", help="which generator to measure")
    parser.add_argument("--seed", type=int, default=None, help="seed of the generated images (default: train.seed)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. metrics.num_fake=50000")


def find_checkpoint(target: str | Path) -> Path:
    """The checkpoint folder named by a run folder or a checkpoint folder; clear error otherwise."""
    from gandist.checkpoint import MARKER, latest_checkpoint

    path = Path(target)
    if (path / MARKER).is_file():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(
            f"{path}: neither a complete checkpoint (a folder with {MARKER}) nor a run folder holding one "
            "under checkpoints/"
        )
    return found


def evaluate(target: str | Path, overrides: list[str] | tuple[str, ...] = (), net: str = "G_ema", seed=None) -> dict:
    """Compute the metrics of a checkpoint's generator in this process (one rank of a launch). Collective."""
    import torch

    from gandist.checkpoint import load_checkpoint
    from gandist.config import apply_overrides, from_dict, validate
    from gandist.ema import refresh_batchnorm_stats
    from gandist.metrics import Evaluator
    from gandist.models import build_models
    from gandist.strategy import make_accelerator

    folder = find_checkpoint(target)
    shared, _ = load_checkpoint(folder)
    cfg = apply_overrides(from_dict(shared["config"], f"config saved in {folder}"), overrides)
    validate(cfg)
    accelerator = make_accelerator(cfg.strategy)
    try:
        m = cfg.model
        G, _ = build_models(m.arch, m.resolution, m.channels, m.z_dim, m.g_width, m.d_width, num_classes=m.num_classes)
        G.load_state_dict(shared[net])
        G = G.to(accelerator.device).eval()
        if net == "G_ema":  # as the training loop does before using G_ema (a no-op for its own checkpoints)
            refresh_batchnorm_stats(G, m.z_dim, m.num_classes, accelerator.device, seed=cfg.train.seed)
        say = print if accelerator.is_main_process else (lambda text: None)
        evaluator = Evaluator(
            cfg.metrics,
            cfg.metrics.reference or cfg.data.shards,
            m.resolution,
            m.channels,
            accelerator.device,
            accelerator.process_index,
            accelerator.num_processes,
            say=lambda text: say(text, file=sys.stderr),
        )
        results = evaluator(G, m.z_dim, m.num_classes, seed=cfg.train.seed if seed is None else seed)
        record = {"checkpoint": str(folder), "kimg": round(shared["nimg"] / 1000, 3), "net": net, **results}
        if accelerator.is_main_process:
            with (folder.parent.parent / "metrics-eval.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the result as one JSON line (rank 0)."""
    from gandist.config import ConfigError
    from gandist.metrics import FeatureNetError

    try:
        record = evaluate(args.target, args.overrides, args.net, args.seed)
    except (ConfigError, FeatureNetError, FileNotFoundError) as e:
        print(f"gandist evaluate: {e}", file=sys.stderr)
        return 2
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(record))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gandist evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
