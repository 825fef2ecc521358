"""List the config keys with their type, value, default and meaning: `gandist config [SECTION|KEY]`.

examples:
  gandist config                                   # every key, by section
  gandist config train                             # one section
  gandist config train.kimg                        # one key
  gandist config model --config configs/fashion_mnist_best.yaml    # values of that config, defaults beside

Values are the defaults, changed by --config FILE and key=value overrides as in `gandist train`;
where a value differs from the default, the default follows it. The meanings are the docstrings of
gandist/config.py; `gandist train --print-config` prints the resolved config as YAML with them as comments.
"""

from __future__ import annotations

import argparse

from gandist.cli.args import error, is_override

NAME = "config"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config command's arguments: an optional SECTION|KEY among the overrides (any order)."""
    parser.add_argument("--config", default=None, help="YAML file with the values that differ from the defaults")
    # not `words`: the shared split (args.split_words) wants a fixed number of positionals, this one is optional
    parser.add_argument(
        "terms", nargs="*", metavar="[SECTION|KEY] key=value", help="a section or dotted key; dotted overrides"
    )


def run(args: argparse.Namespace) -> int:
    """Print the listing."""
    from gandist.config import ConfigError, load_config
    from gandist.config_docs import listing

    names = [t for t in args.terms if not is_override(t)]
    if len(names) > 1:
        return error(f"one SECTION or KEY at a time, got {' '.join(names)} (overrides are key.sub=value)")
    try:
        cfg = load_config(args.config, [t for t in args.terms if is_override(t)])
        print(listing(cfg, names[0] if names else ""), end="")
    except ConfigError as e:
        return error(str(e))
    return 0
