"""The command line: `gandist COMMAND ...` (main.py) and one module per command.

main.py        the sub-command registry and dispatch
args.py        the shared conventions: --config and overrides anywhere, help, one-line errors
train.py       gandist train
config.py      gandist config (the keys, their types, defaults and meanings)
prepare.py     gandist prepare
generator.py   gandist sample | interpolate | generate | export
evaluate.py    gandist evaluate
preflight.py   gandist preflight (what a batch script checks before it launches)
estimate.py    gandist estimate (memory per rank per strategy, and what fits a device)
"""

from gandist.cli.dispatch import main

__all__ = ["main"]
