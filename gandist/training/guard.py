"""After persistent non-finite steps: roll back to the last complete checkpoint, or give up with a clear error.

The guard itself (skip a step whose loss or gradient is NaN/Inf on any rank) lives in the strategy's
optimizer step; this is what the loop does when it keeps happening (faults.max_bad_steps in a row).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gandist.training import checkpoint
from gandist.training.state import TrainState

# counters that describe this job, not the weights: a rollback keeps them
_KEPT = ("skipped_steps", "tracker_run_id", "data_key", "data_stream", "data_batches")


class NonFiniteError(RuntimeError):
    """Training kept producing NaN/Inf after the allowed rollbacks."""


def roll_back(state: TrainState, run_dir: Path, say: Callable[[str], None]) -> None:
    """Reload the newest complete checkpoint after persistent non-finite steps, or raise NonFiniteError."""
    faults = state.cfg.faults
    last = state.strategy.broadcast_object(checkpoint.latest_intact(run_dir, say) if state.strategy.is_main else None)
    progress = state.progress
    if last is None or progress.rollbacks >= faults.max_rollbacks:
        raise NonFiniteError(
            f"{faults.max_bad_steps} consecutive steps with NaN/Inf losses or gradients at step {progress.step}, "
            f"after {progress.rollbacks} rollback(s)"
            + ("" if last else " and no checkpoint to roll back to")
            + ": lower the learning rates, use fp32 (train.precision=fp32), or check the data"
        )
    kept = {key: getattr(progress, key) for key in _KEPT}
    rollbacks = progress.rollbacks + 1
    state.load(last)  # weights, optimizers and counters go back; the data stream goes on
    for key, value in kept.items():
        setattr(state.progress, key, value)
    state.progress.rollbacks = rollbacks
    say(f"gandist: {faults.max_bad_steps} non-finite steps in a row: rolled back to {last} (#{rollbacks})")
