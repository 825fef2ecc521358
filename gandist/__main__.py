"""`python -m gandist ...` is the `gandist` command."""

import sys

from gandist.cli import main

sys.exit(main())
