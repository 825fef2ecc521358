"""The `gandist` command: `gandist train ...` and the other subcommands."""

from __future__ import annotations

import argparse
import sys

from gandist import evaluation, train


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
    p_eval = sub.add_parser(
        "evaluate",
        help="FID / KID / precision-recall of a run's checkpoint (see `gandist evaluate --help`)",
        description=evaluation.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluation.add_arguments(p_eval)
    p_eval.set_defaults(func=evaluation.run)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
