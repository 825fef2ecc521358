"""Maintenance between steps, whatever is due: metrics, the tick record, a grid, a checkpoint.

    every metrics.interval_kimg:     all ranks generate and embed a share; rank 0 computes FID/KID/PR
    every train.tick_kimg:           stats reduced across ranks; rank 0 writes stats.jsonl, trackers, the bar
    every train.snapshot_kimg:       rank 0 writes a G_ema grid of the fixed noise to samples/
    every train.checkpoint_kimg:     all ranks save (state.py, checkpoint.py)
    at the end of the budget: metrics and the tick record once more (the finish does the rest)

G_ema's BatchNorm statistics are re-estimated for its averaged weights before it is used.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gandist.reporting.grids import make_grid, save_grid
from gandist.training.ema import refresh_batchnorm_stats

if TYPE_CHECKING:
    from gandist.training.run import Run


def maintain(run: Run) -> None:
    """After each step, what is due. Collective: every rank calls it after every step."""
    nimg = run.progress.nimg
    done = run.budget_reached
    if run.metrics.due(nimg) or (done and run.evaluator is not None):
        measure(run)
    if run.ticks.due(nimg) or done:
        write_tick(run)
    if run.snapshots.due(nimg) and not done:
        write_grid(run)
    if run.checkpoints.due(nimg) and not done:
        save(run)


def settle_G_ema(run: Run) -> None:
    """Re-estimate G_ema's BatchNorm statistics for its averaged weights (the same on every rank)."""
    m = run.cfg.model
    with run.strategy.ema("G_ema") as G_ema:
        refresh_batchnorm_stats(G_ema, m.z_dim, m.num_classes, run.device, seed=run.cfg.train.seed)


def write_grid(run: Run) -> None:
    """Rank 0 writes G_ema's images of the fixed grid noise to samples/ and the trackers (under ZeRO-3 every
    rank runs G_ema with it: its layers gather their partitions)."""
    settle_G_ema(run)
    s = run.strategy
    if not (s.is_main or s.collective_ema):
        return
    with s.ema("G_ema") as G_ema, s.autocast():
        images = G_ema(run.grid_z, run.grid_c)
    if not s.is_main:
        return
    kimg = run.progress.nimg / 1000
    save_grid(images, run.run_dir / "samples" / f"fakes-{kimg:010.3f}kimg.png")
    if run.cfg.tracking.log_images:
        run.trackers.log_image("samples/fakes", make_grid(images), f"G_ema at {kimg:.3f} kimg", run.progress.nimg)


def write_reals(run: Run, images: torch.Tensor) -> None:
    """Rank 0 writes a grid of the first real batch (once per run)."""
    if not run.strategy.is_main:
        return
    reals = images[: run.cfg.train.grid_size]
    save_grid(reals, run.run_dir / "samples" / "reals.png")
    if run.cfg.tracking.log_images:
        run.trackers.log_image("samples/reals", make_grid(reals), "real training images", 0)


def save(run: Run) -> Path:
    """A checkpoint of this step (every rank)."""
    settle_G_ema(run)
    return run.state.save(run.run_dir, delay_s=run.cfg.debug.checkpoint_delay_s)


def measure(run: Run) -> None:
    """Sample-quality metrics of G_ema (every rank takes part); rank 0 appends them to metrics.jsonl."""
    progress, s = run.progress, run.strategy
    with s.ema("G_ema") as G_ema:
        s.sync_buffers(G_ema)  # buffers copied from G differ per rank: measure rank 0's G_ema everywhere
    settle_G_ema(run)
    m = run.cfg.model
    with s.ema("G_ema") as G_ema:
        results = run.evaluator(G_ema, m.z_dim, m.num_classes, seed=run.cfg.train.seed)
    for key, value in results.items():
        run.phases.stats.add(key, torch.tensor(value, device=run.device))
    if run.strategy.is_main:
        with (run.run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"kimg": round(progress.nimg / 1000, 3), "step": progress.step, **results}) + "\n")
        summary = {k: v for k, v in results.items() if k.count("/") == 1}  # per-class values: in metrics.jsonl
        run.reporter.message(f"gandist: metrics at {progress.nimg / 1000:.3f} kimg: " + json.dumps(summary))
    run.tick_start_time += results["metrics/seconds"]  # keep images_per_s about training


def write_tick(run: Run) -> None:
    """Reduce this tick's statistics over ranks; rank 0 writes them to stats.jsonl, the trackers and the bar."""
    s, progress = run.strategy, run.progress
    elapsed = time.perf_counter() - run.tick_start_time
    shown = progress.nimg - run.tick_start_nimg
    record = {
        "kimg": round(progress.nimg / 1000, 3),
        "step": progress.step,
        "images_per_s": round(shown / max(elapsed, 1e-9), 1),
        "sec_per_kimg": round(elapsed / max(shown / 1000, 1e-9), 3),
        "data_wait_frac": round(run.wait_time / max(elapsed, 1e-9), 4),
        **{k: round(v, 5) for k, v in run.phases.stats.means(s.reduce_mean).items()},
        **run.loader.tick_stats(s.reduce_mean, s.world_size, s.device),
    }
    for name in ("G", "D"):
        record[f"lr/{name}"] = s.optimizer(name).param_groups[0]["lr"]
        if s.scaler(name).is_enabled():
            record[f"loss_scale/{name}"] = s.scaler(name).get_scale()
    if run.phases.guard:
        record["faults/skipped_steps"] = progress.skipped_steps
        record["faults/rollbacks"] = progress.rollbacks
    if record["data/bad_samples"] or record["data/bad_shards"]:
        run.reporter.message(
            f"gandist: skipped {record['data/bad_samples']} bad sample(s) and {record['data/bad_shards']} "
            "unreadable shard(s) this tick"
        )
    if s.device.type == "cuda":
        record["gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(s.device) / 2**30, 3)
    run.reporter.tick(record)
    run.trackers.log(record, progress.nimg)  # trackers' steps are images shown: plots against kimg
    run.start_tick()
