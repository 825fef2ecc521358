"""The training loop: alternating D and G phases, counted in images shown to D (kimg).

    run = set_up(cfg, strategy)                                                           run.py
          process group, run folder, G, D, G_ema, Adam per net, strategy, per-rank shard stream;
          resume from the newest complete checkpoint (state.py) if there is one;
          device settings (device.py): channels_last, fused Adam, TF32, cudnn.benchmark on CUDA,
          glibc's malloc keeping freed memory on the CPU [, torch.compile]
    at the start of a run: a grid of G_ema and one of the reals
    while nimg < train.kimg * 1000 and no stop was agreed:
        train_step(run, next batch)                                                       step.py
            real, c <- this rank's batch (uint8 on the host) -> device, [-1, 1]; c: class labels or None
            lr      <- schedule(kimg)                                                     schedule.py
            D phase: fake = G(z, c').detach();  L_D = d_loss(D(aug(real), c), D(aug(fake), c'))
                     [+ lecam_weight * LeCam] [+ gp_weight * gradient penalty];  step D   phases.py
            G phase: D frozen (raw module);  L_G = g_loss(D(aug(G(z'', c'')), c''));  step G
                     (each phase one optimizer step over strategy.gradient_accumulation micro-batches;
                      train.compile: the first step compiles; if that fails, one warning and the step again eager)
            R1 phase, every r1_interval steps: r1_gamma/2 * r1_interval * |grad D(aug(real))|^2;  step D
            ADA, every augment.interval steps: p += sign(E[sign D(aug(real))] - target) * images / speed
            G_ema <- lerp towards G with a half-life of train.ema_kimg (under ZeRO-3: each rank its partitions)
            nimg += global batch
            (a NaN/Inf loss or gradient on any rank: every rank skips that step;
             faults.max_bad_steps in a row: roll back to the last checkpoint)              guard.py
        maintain(run)                                                                     tick.py
            every few steps: all ranks agree whether to stop early (signal, stop file, time budget)
            when due: metrics (all ranks share the work), the tick record (stats reduced across ranks;
            rank 0 writes stats.jsonl, trackers, the bar), a G_ema grid, a checkpoint (all ranks save)
    finish(run): grid, checkpoint, parameter checksums of every rank in summary.json;
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
from gandist.strategy import make_strategy
from gandist.training import checkpoint
from gandist.training.run import Run, set_up
from gandist.training.step import train_step
from gandist.training.stopping import write_requeue_marker
from gandist.training.tick import maintain, save, write_grid, write_reals


@dataclass
class TrainResult:
    """How a training job ended."""

    run_dir: Path
    stopped_early: bool = False
    """True when a signal, the stop file or the time budget ended the job before its kimg budget."""
    reason: str = ""


def train(cfg: Config) -> TrainResult:
    """Run a whole training job in this process (one rank of a launch)."""
    cfg.validate()
    strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
    try:
        run = set_up(cfg, strategy)
        if run.progress.nimg == 0:
            write_grid(run)
        run.start_tick()
        while not run.finished:
            images, labels = run.next_batch()
            if run.progress.step == 0:
                write_reals(run, images)
            train_step(run, images, labels)
            maintain(run)
        return finish(run)
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            # name the rank: the launcher shows every rank's output interleaved
            print(f"gandist: rank {strategy.rank} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        strategy.close()


def finish(run: Run) -> TrainResult:
    """The last grid and checkpoint, every rank's parameter checksums, summary.json; all ranks leave together."""
    s, progress = run.strategy, run.progress
    write_grid(run)
    existing = checkpoint.latest_checkpoint(run.run_dir)
    nothing_new = run.steps_this_job == 0 and existing is not None and existing.name == f"step-{progress.step:09d}"
    final = existing if nothing_new else save(run)  # never replace a complete checkpoint by the same step
    mine = {"rank": s.rank, **{name: s.digest(name) for name in ("G", "D", "G_ema")}}  # ZeRO-3: param by param
    digests = s.gather_objects(mine)
    if s.is_main:
        _write_summary(run, final, digests)
    run.trackers.finish()
    run.reporter.close()
    s.barrier()  # leave together: a launcher tears down the remaining ranks as soon as one has exited
    run.stopper.uninstall()
    return TrainResult(run.run_dir, run.stopped_early, run.stopper.reason or "")


def _write_summary(run: Run, final: Path, digests: list[dict]) -> None:
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
        "rank_digests": digests,
    }
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    say = run.reporter.message
    if run.stopped_early:
        write_requeue_marker(run.run_dir, run.stopper.reason or "stop requested", kimg)
        say(f"gandist: stopped early ({run.stopper.reason}) at {kimg:.2f} kimg; checkpoint {final}")
    else:
        say(f"gandist: done at {kimg:.2f} kimg; samples in {run.run_dir / 'samples'}, checkpoint {final}")
    if not in_sync:
        say(f"gandist: WARNING ranks hold different parameters: {digests}")
