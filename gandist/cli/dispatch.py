"""The `gandist` command: one sub-command per job, each with the same conventions (args.py)."""

from __future__ import annotations

import argparse
import sys

from gandist.cli import config, estimate, evaluate, generator, preflight, prepare, train
from gandist.cli.args import Command, HelpFormatter, guarded, split_words

COMMANDS = {
    c.name: c
    for c in [
        Command.of(train),
        Command.of(config),
        Command.of(prepare),
        *generator.COMMANDS,
        Command.of(evaluate),
        Command.of(preflight),
        Command.of(estimate),
    ]
}


def command_parser(command: Command) -> argparse.ArgumentParser:
    """The parser of one sub-command (prog `gandist NAME`)."""
    parser = argparse.ArgumentParser(
        prog=f"gandist {command.name}", description=command.description, formatter_class=HelpFormatter
    )
    command.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `gandist COMMAND ...`; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        top = argparse.ArgumentParser(prog="gandist", description="Distributed GAN trainer.")
        sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
        for c in COMMANDS.values():
            sub.add_parser(c.name, help=c.summary)
        top.parse_args(argv)  # prints the help, or the error for an unknown command, and exits
        return 2
    command = COMMANDS[argv[0]]
    parser = command_parser(command)
    args = split_words(parser, parser.parse_intermixed_args(argv[1:]))
    return guarded(command.run)(args)


if __name__ == "__main__":
    sys.exit(main())
