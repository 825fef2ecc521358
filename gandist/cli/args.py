"""The one command-line convention of every sub-command.

- options and positionals in any order (`gandist evaluate k=v runs/x --seed 1` = `gandist evaluate runs/x
  --seed 1 k=v`): parsed with argparse's intermixed mode;
- commands that take a config accept `--config FILE` anywhere and `key.sub=value` overrides anywhere;
- help shows a description and examples, and a default only where there is one;
- every error is one line on stderr, `gandist: error: ...` (the traceback only with GANDIST_DEBUG=1), with
  the exit status of its kind (report()).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

# a dotted config key followed by '=': what tells an override from a path among positionals
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    """A sub-command: its name, one line for `gandist --help`, its full help, its arguments and its work."""

    name: str
    summary: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    @classmethod
    def of(cls, module: ModuleType) -> Command:
        """The command a module defines (NAME, its docstring, add_arguments, run)."""
        doc = module.__doc__ or ""
        return cls(module.NAME, doc.splitlines()[0], doc, module.add_arguments, module.run)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; `(default: X)` only for optional arguments that have a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and not action.required
        if shown and action.option_strings and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def is_override(token: str) -> bool:
    """Whether a command-line token is a `key.sub=value` override."""
    return bool(_OVERRIDE.match(token))


def add_config_arguments(parser: argparse.ArgumentParser, positionals: tuple[tuple[str, str], ...] = ()) -> None:
    """--config, the overrides, and this command's own positionals ((name, help) pairs), in any order."""
    parser.add_argument("--config", default=None, help="YAML file with the values that differ from the defaults")
    names = " ".join(name.upper() for name, _ in positionals)
    parser.add_argument(
        "words",
        nargs="*",
        metavar=f"{names} key=value" if names else "key=value",
        help="; ".join(
            [f"{name.upper()}: {text}" for name, text in positionals] + ["dotted overrides, e.g. train.kimg=10"]
        ),
    )
    parser.set_defaults(_positionals=[name for name, _ in positionals])


def split_words(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Sort the free words into `args.overrides` and the command's positionals (error if any is missing)."""
    names = getattr(args, "_positionals", [])
    words = getattr(args, "words", [])
    args.overrides = [w for w in words if is_override(w)]
    rest = [w for w in words if not is_override(w)]
    if len(rest) != len(names):
        if len(rest) < len(names):
            parser.error(f"missing {' '.join(n.upper() for n in names[len(rest) :])}")
        parser.error(f"unrecognized arguments: {' '.join(rest[len(names) :])} (overrides are key.sub=value)")
    for name, value in zip(names, rest):
        setattr(args, name, value)
    return args


def error(message: str) -> int:
    """Print a user error as one line and return the exit status for it."""
    print(f"gandist: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def debug() -> bool:
    """GANDIST_DEBUG=1: unexpected errors show their traceback."""
    return os.environ.get("GANDIST_DEBUG", "") not in ("", "0")


def report(e: BaseException) -> int:
    """Print an error the way every command does (one line; the traceback only with GANDIST_DEBUG=1) and return
    its exit status: 2 bad input (config, data, checkpoint, paths), 3 training diverged, 130 aborted, 1 a crash.

    An error that every rank of a launch raised together (marked `collective`) is printed by rank 0 only.
    """
    from gandist.errors import EXIT_DIVERGED, user_errors

    rank, world = getattr(e, "rank", None), getattr(e, "world_size", 1)
    launched_rank = os.environ.get("RANK", "0") or "0"
    if rank is None and launched_rank != "0" and isinstance(e, user_errors()):
        return EXIT_USAGE  # before the process group: every rank read the same config and says the same
    if getattr(e, "collective", False) and rank not in (None, 0):
        return EXIT_USAGE
    who = f"rank {rank}: " if rank is not None and world > 1 else ""
    if isinstance(e, KeyboardInterrupt):
        print("gandist: aborted (Ctrl-C)", file=sys.stderr)
        return 130
    if isinstance(e, user_errors()):
        diverged = type(e).__name__ == "NonFiniteError"
        print(f"gandist: error: {who}{e}", file=sys.stderr)
        return EXIT_DIVERGED if diverged else EXIT_USAGE
    if debug():
        traceback.print_exception(e)
    hint = "" if debug() else " (GANDIST_DEBUG=1 shows the traceback)"
    print(f"gandist: error: {who}{type(e).__name__}: {e}{hint}", file=sys.stderr)
    return 1


def guarded(work: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command, turning any error into one line on stderr and its exit status (report)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return work(args)
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every error ends as one line and a status
            return report(e)

    return run
