"""The kinds of errors gandist reports to a user, and their exit statuses.

A user error is a problem with the input (config, data, checkpoint, a path) that the message names and
says how to fix: it is printed as one line, without a traceback. Anything else is a crash.
"""

from __future__ import annotations

EXIT_USAGE = 2  # bad input: config, data, checkpoint, paths
EXIT_DIVERGED = 3  # training kept producing NaN/Inf (faults.max_bad_steps, faults.max_skipped_frac)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is the whole story (imported lazily: the CLI stays light)."""
    from gandist.config import ConfigError
    from gandist.data.prepare import PrepareError
    from gandist.generator.load import SamplingError
    from gandist.loading import UnsafeFile
    from gandist.training.checkpoint import CheckpointError
    from gandist.training.guard import NonFiniteError

    return (ConfigError, CheckpointError, SamplingError, PrepareError, NonFiniteError, UnsafeFile, OSError)
