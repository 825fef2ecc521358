"""`python -m gandist.cli ...` (e.g. under `accelerate launch -m gandist.cli generate ...`) is the `gandist` command."""

import sys

from gandist.cli import main

sys.exit(main())
