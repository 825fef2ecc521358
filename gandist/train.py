"""Train a GAN: `accelerate launch gandist/train.py ...`, `python -m gandist.train ...`, or `gandist train ...`.

`gandist train --help` lists the arguments and launch examples.
"""

import os
import sys

if __name__ == "__main__":
    # Run as a script (accelerate launch gandist/train.py), Python puts this folder first on sys.path, where
    # gandist's sub-packages would shadow top-level modules of the same name: import gandist as a package.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

    from gandist.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
