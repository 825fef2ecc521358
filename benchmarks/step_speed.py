#!/usr/bin/env python3
"""gandist's training throughput as a ratio to the hand-written loop, measured in the same run.

    python benchmarks/step_speed.py                       # DCGAN 32 px, batch 64, fp32 on this machine
    python benchmarks/step_speed.py --res 64 --batch 256 --precision bf16 --steps 100

Three measurements, each in its own process with the same thread count, interleaved and repeated
(median of --repeats) so that machine noise hits all alike:

  plain      shared/bench/plain_gan.py: one D step + one G step on a fixed random batch
  synthetic  gandist's own step (strategy, D phase, G phase, G_ema update) on a fixed random batch
  train      the whole `gandist train` job reading the embedded shards through the loader
             (images/s from its stats.jsonl, first tick dropped as warm-up)
  train+X    the same with tracker X on (--tracking wandb: an offline W&B run)

Same model (DCGAN, width 64, 3 channels: the parameter counts of plain_gan.py), batch and
precision. Prints one JSON line per measurement, then one summary line with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT.parent / "shared" / "bench" / "plain_gan.py"


def synthetic_worker(a: argparse.Namespace) -> None:
    """Time gandist's step on a fixed batch (runs in a child process)."""
    import torch

    from gandist.config import load_config
    from gandist.ema import ema_beta, make_ema, update_ema
    from gandist.loop import Phases, build_nets, make_optimizer
    from gandist.losses import get_losses
    from gandist.strategy import Strategy, make_accelerator
    from gandist.tracking import TickStats

    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = load_config(
        None,
        [
            f"model.resolution={a.res}",
            "model.channels=3",
            f"train.batch={a.batch}",
            f"train.precision={a.precision}",
            f"train.channels_last={a.channels_last}",
        ],
    )
    strategy = Strategy(make_accelerator(cfg.strategy), cfg.train.precision)
    device = strategy.device
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    G, D = build_nets(cfg)
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    G_ema = make_ema(G)
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt))
    strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
    phases = Phases(strategy, *get_losses("nonsaturating"), TickStats(device))
    real = (torch.rand(a.batch, 3, a.res, a.res, device=device) * 2 - 1).contiguous(memory_format=fmt)
    noise = torch.Generator(device=device).manual_seed(1)

    def step(nimg: int) -> None:
        phases.d_phase(real, torch.randn(a.batch, 100, device=device, generator=noise))
        phases.g_phase(torch.randn(a.batch, 100, device=device, generator=noise))
        update_ema(G_ema, G, ema_beta(a.batch, nimg, 10.0, 0.05))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(a.warmup):
        step(i * a.batch)
    sync()
    t0 = time.perf_counter()
    for i in range(a.steps):
        step((a.warmup + i) * a.batch)
    sync()
    dt = time.perf_counter() - t0
    phases.stats.means(strategy.reduce_mean)
    print(json.dumps({"images_per_s": round(a.batch * a.steps / dt, 1), "step_ms": round(1000 * dt / a.steps, 3)}))


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_plain(a: argparse.Namespace) -> float:
    cmd = [
        sys.executable,
        str(PLAIN),
        "--res",
        str(a.res),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--precision",
        a.precision,
        "--threads",
        str(a.threads),
    ]
    if a.channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_child_env(a.threads)).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def run_synthetic(a: argparse.Namespace) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        "synthetic",
        "--res",
        str(a.res),
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--warmup",
        str(a.warmup),
        "--precision",
        a.precision,
        "--threads",
        str(a.threads),
    ]
    if a.channels_last:
        cmd.append("--channels-last")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_child_env(a.threads)).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def run_train(a: argparse.Namespace, report_to: str = "none") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        warm_kimg = a.warmup * a.batch / 1000
        total = (a.warmup + a.steps) * a.batch
        cmd = [
            sys.executable,
            "-m",
            "gandist.train",
            f"output_dir={tmp}",
            "run_name=bench",
            "model.channels=3",
            f"model.resolution={a.res}",
            f"train.batch={a.batch}",
            f"train.precision={a.precision}",
            f"train.kimg={total / 1000}",
            f"train.tick_kimg={warm_kimg}",
            f"train.snapshot_kimg={total}",
            "train.checkpoint_kimg=0",
            f"train.channels_last={a.channels_last}",
            f"data.num_workers={a.workers}",
            f"tracking.report_to={report_to}",
        ]
        if a.res != 32:
            raise SystemExit("--mode train reads the embedded 32 px shards: use --res 32 or --skip-train")
        env = {**_child_env(a.threads), "WANDB_MODE": "offline"}
        subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
        lines = [json.loads(x) for x in (Path(tmp) / "bench" / "stats.jsonl").read_text().splitlines()]
        # drop the warm-up tick (the first line); the rest: images shown / seconds taken
        shown = (lines[-1]["kimg"] - lines[0]["kimg"]) * 1000
        seconds = sum(t["sec_per_kimg"] * (t["kimg"] - prev["kimg"]) for prev, t in zip(lines, lines[1:]))
        return shown / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=32, choices=[32, 64, 128])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: as is)")
    p.add_argument("--workers", type=int, default=1, help="loader workers for --mode train")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-train", action="store_true", help="only plain vs synthetic")
    p.add_argument(
        "--tracking",
        default="",
        choices=["", "wandb", "tensorboard"],
        help="also run the train mode with this tracker on (offline) and report the ratio to tracking off",
    )
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "synthetic":
        synthetic_worker(a)
        return
    if not PLAIN.is_file():
        raise SystemExit(f"reference loop not found at {PLAIN}")
    runners = {"plain": run_plain, "synthetic": run_synthetic}
    if not a.skip_train:
        runners["train"] = run_train
    if a.tracking:
        runners[f"train+{a.tracking}"] = lambda a: run_train(a, report_to=a.tracking)
    results: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(a.repeats):
        for name, fn in runners.items():
            ips = fn(a)
            results[name].append(ips)
            print(json.dumps({"repeat": r, "mode": name, "images_per_s": round(ips, 1)}), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    summary = {
        "res": a.res,
        "batch": a.batch,
        "precision": a.precision,
        "channels_last": a.channels_last,
        "threads": a.threads or "default",
        **{f"{k}_images_per_s": round(v, 1) for k, v in med.items()},
        **{f"ratio_{k}_to_plain": round(v / med["plain"], 3) for k, v in med.items() if k != "plain"},
    }
    if a.tracking and "train" in med:
        summary[f"ratio_tracking_{a.tracking}_on_to_off"] = round(med[f"train+{a.tracking}"] / med["train"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
