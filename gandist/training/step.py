"""One training iteration: this rank's real batch and the global noise through the phases, then G_ema.

real, c      <- the batch -> device, [-1, 1]; c: class labels or None
lr           <- schedule(kimg)
D phase, G phase (every train.d_steps steps) [, R1/R2 phase every train.r1_interval steps]   (phases.py)
ADA          <- p moves every augment.interval steps
G_ema        <- lerp towards G (under ZeRO-3 each rank its own partitions: no all-gather)
nimg += global batch; the non-finite guard counts skipped steps and rolls back after too many
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from gandist.data.specs import DataError
from gandist.data.stream import to_device_float
from gandist.training.ema import ema_beta
from gandist.training.guard import roll_back
from gandist.training.schedule import lr_multiplier

if TYPE_CHECKING:
    from gandist.training.run import Run


def train_step(run: Run, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One D/G iteration on this rank's host batch (uint8 images, int64 labels)."""
    cfg, s, progress = run.cfg, run.strategy, run.progress
    t, device = cfg.train, s.device
    real = to_device_float(images, device, run.memory_format)
    c_real = None
    if cfg.model.num_classes:  # pinned host labels: an asynchronous copy, no wait for the device
        c_real = class_labels(labels, cfg.model.num_classes, cfg.data.shards).to(device, non_blocking=True)
    if t.lr_warmup_kimg > 0 or t.lr_decay != "constant":
        set_learning_rates(run)
    if run.debug is not None:
        run.debug.before_step(run.steps_this_job, run.phases)

    z_d, z_g, c_d, c_g = draw_noise(run)
    g_step = progress.step % t.d_steps == 0  # the run's step, not this job's: a resume keeps the schedule
    step = partial(run.phases.step, real, z_d, z_g, c_real, c_d, c_g, g_step=g_step)
    # a job's first G phase comes within its first d_steps iterations (a resume may start between G steps)
    ok = first_step_or_eager(s, step, run.reporter.message) if run.steps_this_job < t.d_steps else step()
    if t.lazy_regularized and progress.step % t.r1_interval == 0:
        ok = run.phases.r1_phase(real, c_real, t.r1_gamma, t.r1_interval, z_d, c_d, t.r2_gamma) and ok
    _adapt_augmentation(run)
    s.update_ema("G_ema", ema_beta(t.batch, progress.nimg, t.ema_kimg, t.ema_rampup))  # local: no collective
    progress.nimg += t.batch
    progress.step += 1
    progress.data_batches += 1
    run.steps_this_job += 1
    run.reporter.advance(progress.nimg / 1000)
    if run.phases.guard:
        _count_bad_steps(run, ok)


def draw_noise(run: Run) -> tuple[torch.Tensor, ...]:
    """z (and fake class labels) for D and G: drawn for the global batch from the shared generator, so a run's
    noise does not depend on the number of ranks; this rank takes its slice."""
    cfg, s = run.cfg, run.strategy
    batch, noise, device = cfg.train.batch, run.state.noise, s.device
    per_rank = batch // s.world_size
    mine = slice(s.rank * per_rank, (s.rank + 1) * per_rank)
    z_d = torch.randn(batch, cfg.model.z_dim, device=device, generator=noise)
    z_g = torch.randn(batch, cfg.model.z_dim, device=device, generator=noise)
    c_d = c_g = None
    if cfg.model.num_classes:
        c_d = torch.randint(cfg.model.num_classes, (batch,), device=device, generator=noise)[mine]
        c_g = torch.randint(cfg.model.num_classes, (batch,), device=device, generator=noise)[mine]
    return z_d[mine], z_g[mine], c_d, c_g


def set_learning_rates(run: Run) -> None:
    """Both nets' learning rates for the images shown so far (train.lr_warmup_kimg, lr_decay, lr_final)."""
    t = run.cfg.train
    factor = lr_multiplier(run.progress.nimg / 1000, t.kimg, t.lr_warmup_kimg, t.lr_decay, t.lr_final)
    for name in ("G", "D"):
        for group in run.strategy.optimizer(name).param_groups:
            group["lr"] = run.base_lr[name] * factor


def _adapt_augmentation(run: Run) -> None:
    augment, stats = run.phases.augment, run.phases.stats
    run.ada_nimg += run.cfg.train.batch
    if augment.adaptive and (run.progress.step + 1) % run.cfg.augment.interval == 0:
        stats.add("augment/rt", augment.adjust(run.ada_nimg, run.strategy.reduce_mean))
        run.ada_nimg = 0
    if augment.ada_ops:
        stats.add("augment/p", augment.p)


def _count_bad_steps(run: Run, ok: bool) -> None:
    """The non-finite guard's bookkeeping: skipped steps, and a rollback after faults.max_bad_steps in a row."""
    run.phases.stats.add("faults/nonfinite_frac", torch.full((), 0.0 if ok else 1.0, device=run.device))  # no copy
    run.bad_in_a_row = 0 if ok else run.bad_in_a_row + 1
    run.progress.skipped_steps += 0 if ok else 1
    run.skipped_this_job += 0 if ok else 1
    if run.bad_in_a_row >= run.cfg.faults.max_bad_steps:
        roll_back(run.state, run.run_dir, run.reporter.message)
        run.bad_in_a_row = 0


def class_labels(labels: torch.Tensor, num_classes: int, shards: str) -> torch.Tensor:
    """Check a host batch of labels for a conditional model (-1 means the sample had no cls)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"model.num_classes={num_classes} but data.shards={shards or '<embedded sample>'!r} has "
            f"{'samples without a cls label' if low < 0 else f'label {high}'}: write labels 0..{num_classes - 1} "
            "into the shards or set model.num_classes=0 (unconditional)"
        )
    return labels


def first_step_or_eager(strategy, step: Callable[[], bool], say: Callable[[str], None]) -> bool:
    """Run one of a job's first training steps of compiled nets; if it raises, say so in one line, go eager and
    run it again.

    torch.compile compiles at the first call (and the backward at the first backward), so the first step of each
    phase is where a compiler error shows (G's first phase may come d_steps - 1 iterations after D's). A failure in
    the G phase comes after D's step: D then steps twice on this one batch. Without
    compiled nets, errors pass through untouched.
    """
    if not strategy.compiled:
        return step()
    try:
        return step()
    except Exception as e:  # any compiler error; a real bug raises again from the eager step below
        say(f"gandist: WARNING train.compile failed, continuing eager: {_one_line(e)}")
        strategy.eager()
        return step()


def _one_line(error: BaseException) -> str:
    """The error and, for dynamo's wrappers (BackendCompilerFailed, ...), the error that caused it, in one line."""
    chain = [error]
    while len(chain) < 5 and (cause := getattr(chain[-1], "inner_exception", None) or chain[-1].__cause__):
        chain.append(cause)
    first_line = lambda e: next((x.strip() for x in str(e).splitlines() if x.strip()), "")  # noqa: E731
    text = " <- ".join(f"{type(e).__name__}: {first_line(e)}" for e in dict.fromkeys([chain[0], chain[-1]]))
    return text if len(text) <= 400 else text[:397] + "..."
