"""The `gandist` command: `gandist train ...` and the other subcommands."""

from __future__ import annotations

import argparse
import sys

from gandist import evaluation, generator_cli, prepare, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gandist", description="Distributed GAN trainer.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser(
        "train",
        help="train a GAN (see `gandist train --help`)",
        description=train.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_arguments(p_train)
    p_train.set_defaults(func=train.run)
    p_prepare = sub.add_parser(
        "prepare",
        help="turn images into WebDataset shards (see `gandist prepare --help`)",
        description=prepare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prepare.add_arguments(p_prepare)
    p_prepare.set_defaults(func=prepare.run)
    generator_cli.add_commands(sub)  # sample, interpolate, generate, export
    p_eval = sub.add_parser(
        "evaluate",
        help="FID / KID / precision-recall of a run's checkpoint (see `gandist evaluate --help`)",
        description=evaluation.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluation.add_arguments(p_eval)
    p_eval.set_defaults(func=evaluation.run)
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":  # overrides may stand before or after --config
        args.overrides += [x for x in extra if "=" in x and not x.startswith("-")]
        extra = [x for x in extra if x not in args.overrides]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
