"""The training loop: alternating D and G phases, counted in images shown to D (kimg).

    run = set_up(cfg, strategy)                                                           run.py
          process group, run folder, G, D, G_ema, Adam per net, strategy, per-rank shard stream;
          resume from the newest complete checkpoint (state.py) if there is one;
          device settings (device.py): channels_last, fused Adam, TF32, cudnn.benchmark on CUDA,
          glibc's malloc keeping freed memory on the CPU [, torch.compile]
    at the start of a run: a grid of G_ema and one of the reals
    while nimg < train.kimg * 1000:
        batch <- this rank's next batch (a stop request interrupts the wait)              run.py
        all ranks vote whether to stop (signal, stop file, time budget, launcher gone): if so, leave the loop
        train_step(run, batch)                                                            step.py
            real, c <- this rank's batch (uint8 on the host) -> device, [-1, 1]; c: class labels or None
            lr      <- schedule(kimg)                                                     schedule.py
            D phase: fake = G(z, c').detach();  L_D = d_loss(D(aug(real), c), D(aug(fake), c'))
                     [+ lecam_weight * LeCam] [+ gp_weight * gradient penalty]
                     [+ consistency_weight * bCR: (D(x) - D(T(x)))^2 on aug(real) and aug(fake)]
                     [+ class_weight_d * CE(D's class logits of aug(real), c)];  step D      phases.py
            G phase, every d_steps steps: D frozen (raw module);  L_G = g_loss(D(aug(G(z'', c'')), c''))
                     [+ class_weight_g * CE(D's class logits of aug(G(z'', c'')), c'')];  step G
                     (each phase one optimizer step over strategy.gradient_accumulation micro-batches;
                      train.compile: the first step compiles; if that fails, one warning and the step again eager)
            R1 phase, every r1_interval steps: r1_gamma/2 * r1_interval * |grad D(aug(real))|^2
                     [+ r2_gamma/2 * r1_interval * |grad D(aug(G(z, c')))|^2, the D phase's z, c'];  step D
            ADA, every augment.interval steps: p += sign(E[sign D(aug(real))] - target) * images / speed
            G_ema <- lerp towards G with a half-life of train.ema_kimg (under ZeRO-3: each rank its partitions)
            nimg += global batch
            (a NaN/Inf loss or gradient on any rank: every rank skips that step;
             faults.max_bad_steps in a row: roll back to the last checkpoint)              guard.py
        maintain(run)                                                                     tick.py
            when due: metrics (all ranks share the work), the tick record (stats reduced across ranks;
            rank 0 writes stats.jsonl, trackers, the bar), a G_ema grid, a checkpoint (all ranks save)
    finish(run): loader workers shut down, checkpoint, grid, parameter checksums of every rank in summary.json;
                 stopped early: also a REQUEUE marker, and the process exits with REQUEUE_EXIT_CODE

z (and c' for conditional fakes) is drawn for the global batch from one generator shared by all
ranks and each rank takes its slice, so a run's noise does not depend on the number of ranks.
Augmentation and StyleGAN2's noise inputs use the global generator, seeded per rank.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from gandist.config import Config
from gandist.files import atomic_write_text
from gandist.reporting.trackers import tracker_names
from gandist.strategy import make_strategy
from gandist.training import checkpoint
from gandist.training.guard import NonFiniteError
from gandist.training.run import Run, set_up
from gandist.training.step import train_step
from gandist.training.stopping import StopRequested, launcher_cuts_stops_short, stop_with_parent, write_requeue_marker
from gandist.training.tick import maintain, save, write_grid, write_reals, write_tick


@dataclass
class TrainResult:
    """How a training job ended."""

    run_dir: Path
    stopped_early: bool = False
    """True when a signal, the stop file or the time budget ended the job before its kimg budget."""
    reason: str = ""


def train(cfg: Config) -> TrainResult:
    """Run a whole training job in this process (one rank of a launch).

    Errors leave with the rank and world size attached (e.rank, e.world_size) for the one line that reports them.
    """
    cfg.validate()
    f = cfg.faults
    stopper = StopRequested(None, f.stop_after_minutes, f.check_every)
    stopper.install()  # first: a signal during set-up is a stop request too
    stop_with_parent()
    if warning := launcher_cuts_stops_short():
        print(warning, file=sys.stderr, flush=True)
    strategy, run = None, None
    try:
        log_with = tracker_names(cfg.tracking)  # the accelerator holds the trackers (reporting/trackers.py)
        strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch, log_with, cfg.output_dir)
        run = set_up(cfg, strategy, stopper)
        if run.progress.nimg == 0:
            write_grid(run)
        run.start_tick()
        while not run.budget_reached:
            batch = run.next_batch()  # None: a stop request interrupted the wait
            if run.stop_agreed() or batch is None:
                break
            if run.progress.step == 0:
                write_reals(run, batch[0])
            train_step(run, *batch)
            maintain(run)
        return finish(run)
    except BaseException as e:
        if run is not None:
            run.reporter.close()  # the bar ends its line before the error is printed
        e.rank = strategy.rank if strategy is not None else None  # type: ignore[attr-defined]
        e.world_size = strategy.world_size if strategy is not None else 1  # type: ignore[attr-defined]
        raise
    finally:
        if run is not None:
            run.lock.release()
        if strategy is not None:
            strategy.close()


def finish(run: Run) -> TrainResult:
    """The last grid and checkpoint, every rank's parameter checksums, summary.json; all ranks leave together."""
    s, progress = run.strategy, run.progress
    run.loader.close()  # before the checkpoint: loader workers are done, and their exit is no error
    existing = checkpoint.latest_checkpoint(run.run_dir)
    nothing_new = run.steps_this_job == 0 and existing is not None and existing.name == f"step-{progress.step:09d}"
    final = existing if nothing_new else save(run)  # first (a launcher may be counting down); never twice a step
    if progress.nimg > run.tick_start_nimg:  # stopped early inside a tick: its statistics so far
        write_tick(run)
    write_grid(run)
    mine = {"rank": s.rank, **{name: s.digest(name) for name in ("G", "D", "G_ema")}}  # ZeRO-3: param by param
    digests = s.gather_objects(mine)
    failure = diverged(run)
    if s.is_main:
        _write_summary(run, final, digests, failure is not None)
    run.trackers.finish()
    run.reporter.close()
    s.barrier()  # leave together: a launcher tears down the remaining ranks as soon as one has exited
    if failure is not None:
        raise failure
    return TrainResult(run.run_dir, run.stopped_early, run.stopper.reason or "")


def diverged(run: Run) -> NonFiniteError | None:
    """A job that skipped most of its steps as non-finite has not trained: the error to end it with, or None."""
    limit, steps, skipped = run.cfg.faults.max_skipped_frac, run.steps_this_job, run.skipped_this_job
    if not (run.phases.guard and steps and skipped > limit * steps):
        return None
    error = NonFiniteError(
        f"{skipped} of this job's {steps} steps were skipped for NaN/Inf losses or gradients (more than "
        f"faults.max_skipped_frac={limit:g}): lower the learning rates, use fp32 (train.precision=fp32), "
        f"or check the data; the checkpoint is in {run.run_dir / 'checkpoints'}"
    )
    error.collective = True  # type: ignore[attr-defined] - every rank counted the same steps
    return error


def _write_summary(run: Run, final: Path, digests: list[dict], failed: bool) -> None:
    progress, kimg = run.progress, run.progress.nimg / 1000
    in_sync = all(d[k] == digests[0][k] for d in digests for k in ("G", "D", "G_ema"))
    summary = {
        "kimg": round(kimg, 3),
        "step": progress.step,
        "world_size": run.strategy.world_size,
        "checkpoint": str(final),
        "stopped_early": run.stopped_early,
        "skipped_steps": progress.skipped_steps,
        "rollbacks": progress.rollbacks,
        "params_in_sync": in_sync,
        "diverged": failed,
        "rank_digests": digests,
    }
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    say = run.reporter.message
    if run.stopped_early:
        why = run.stopper.why()
        write_requeue_marker(run.run_dir, why, kimg)
        say(f"gandist: stopped early ({why}) at {kimg:.2f} kimg; checkpoint {final}")
    elif not failed:
        say(f"gandist: done at {kimg:.2f} kimg; samples in {run.run_dir / 'samples'}, checkpoint {final}")
    if not in_sync:
        say(f"gandist: WARNING ranks hold different parameters: {digests}")
