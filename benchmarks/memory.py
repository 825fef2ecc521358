#!/usr/bin/env python3
"""Peak memory per rank of real training under DDP and ZeRO-1/2/3, beside `gandist estimate`'s figures.

    python benchmarks/memory.py                     # (a) a 226 M-parameter StyleGAN2, 2 gloo ranks on the CPU
    python benchmarks/memory.py --large --steps 2   # (b) 600 M parameters: DDP refused, ZeRO-3 trained, checkpointed
    python benchmarks/memory.py --strategies zero3 --steps 3 --checkpoint

Each strategy runs in its own `accelerate launch` of 2 processes (launch/cpu_2proc.yaml: gloo on the CPU,
or every GPU with launch/gpus_1node.yaml when CUDA is there). A rank imports everything and forms its
process group, then measures its baseline: on the CPU its resident set size after resetting the peak
(/proc/self/clear_refs), on a GPU the allocated device memory. It builds the run exactly as `gandist train`
does (training/run.py: G, D, G_ema, optimizers, strategy, data from the embedded 32 px sample) and trains
`--steps` iterations (training/step.py). Measured per rank, minus the baseline:

    set-up     peak while building and wrapping the nets (VmHWM; on a GPU torch.cuda.max_memory_allocated)
    training   peak over the steps (the peak counter reset after the set-up)
    save/load  with --checkpoint: the time and the peak of writing a checkpoint (every rank) and of
               loading it back into the running nets

The runs leave glibc's malloc untuned (train.malloc_tuning=false): the tuning that speeds up CPU steps keeps
freed memory in the process, and ZeRO-3 frees a gathered parameter after each use, so with it the resident
set also counts freed gathers and fragmentation (measured here: ZeRO-3 6.1 GiB tuned against 4.1 GiB
untuned per rank, DDP 5.2 against 4.5 GiB).

The estimate is `gandist estimate`'s (gandist/planning/) for the same config, 2 ranks, fp32 on the CPU.
On the CPU the figures include whatever the process allocates besides the nets (the loader's shuffle
buffer, allocator slack), so a ratio measured / estimated slightly above 1 is expected; the goal is
every ratio within 15%.

(b) --large: a G + D whose model states do not fit twice in this 24 GiB machine (600 M parameters: DDP's 16
bytes per parameter plus G_ema, about 11.8 GiB per rank estimated and ~13 GiB measured at DDP's ratio, x 2
ranks): the planner is asked for a budget of half the machine per rank and refuses DDP; ZeRO-3 trains a few
steps and writes a checkpoint (each rank its partitions, nothing gathered), which is loaded back. It needs
about 20 GiB free (two ranks of ~9.7 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30

# StyleGAN2 at 32 px grey (the embedded sample's images) with wide low-resolution layers: many parameters,
# little compute. (a): 226 M parameters (G 81.3 M, D 144.8 M); (b): 600 M (G 225.3 M, D 374.7 M).
MODELS = {
    "default": ["model.channel_base=8192", "model.channel_max=2048"],
    "large": ["model.channel_base=16384", "model.channel_max=3072"],
}


def overrides(a: argparse.Namespace, strategy: str, out_dir: str) -> list[str]:
    """The run's config overrides for one strategy."""
    stage = (
        ["strategy.name=ddp"]
        if strategy == "ddp"
        else ["strategy.name=deepspeed", f"strategy.zero_stage={strategy[-1]}"]
    )
    return [
        "model.arch=stylegan2",
        "model.resolution=32",
        "model.channels=1",
        "model.z_dim=512",
        *MODELS["large" if a.large else "default"],
        f"train.batch={2 * a.micro_batch}",
        "train.precision=fp32",
        "train.malloc_tuning=false",  # tuned, glibc keeps freed blocks: RSS peaks then count ZeRO-3's freed gathers
        "train.checkpoint_kimg=0",
        "data.num_workers=0",
        f"output_dir={out_dir}",
        "run_name=memory",
        *stage,
        *a.set,
    ]


def _status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


class Meter:
    """Peak memory of this process since the last reset, minus a baseline: RSS on the CPU, allocated on CUDA."""

    def __init__(self, device) -> None:
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"
        self.base = 0
        self.reset()
        self.base = self.now()

    def now(self) -> int:
        return self.torch.cuda.memory_allocated() if self.cuda else _status("VmRSS")

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    def peak(self) -> int:
        """Peak since the last reset, minus the baseline."""
        top = self.torch.cuda.max_memory_allocated() if self.cuda else _status("VmHWM")
        return top - self.base


def worker(a: argparse.Namespace) -> None:
    """One rank: build the run, train, [checkpoint], report (rank 0 prints one JSON line)."""
    import gc

    import torch

    from gandist.config import load_config
    from gandist.strategy import make_strategy
    from gandist.training.run import set_up
    from gandist.training.step import train_step
    from gandist.training.stopping import StopRequested
    from gandist.training.tick import save

    torch.set_num_threads(1)
    cfg = load_config(None, a.overrides)
    strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
    gc.collect()
    meter = Meter(strategy.device)
    run = set_up(cfg, strategy, StopRequested(None, 0, 1))  # no signal handling: a benchmark is stopped by killing it
    mine = {"rank": strategy.rank, "setup": meter.peak()}
    meter.reset()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        train_step(run, *run.next_batch())
    mine.update(training=meter.peak(), step_s=(time.perf_counter() - t0) / a.steps)
    if a.checkpoint:
        meter.reset()
        before, t0 = meter.now(), time.perf_counter()
        path = save(run)
        mine.update(save_s=time.perf_counter() - t0, save_peak=meter.peak() + meter.base - before)
        strategy.barrier()
        meter.reset()
        before, t0 = meter.now(), time.perf_counter()
        run.state.load(path)
        mine.update(load_s=time.perf_counter() - t0, load_peak=meter.peak() + meter.base - before)
        if strategy.is_main:
            mine["checkpoint_bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    ranks = strategy.gather_objects(mine)
    if strategy.is_main:
        print(json.dumps({"ranks": ranks}), flush=True)
    run.loader.close()
    run.lock.release()
    strategy.close()


def launch(a: argparse.Namespace, strategy: str) -> dict:
    """Run one strategy on 2 processes; rank 0's JSON."""
    import socket

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = "gpus_1node.yaml" if torch.cuda.is_available() else "cpu_2proc.yaml"
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--config_file",
            str(ROOT / "launch" / config),
            "--num_processes",
            "2",
            "--main_process_port",
            str(port),
            __file__,
            "--worker",
            "--steps",
            str(a.steps),
            *(["--checkpoint"] if a.checkpoint else []),
            *overrides(a, strategy, out),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise SystemExit(f"{strategy} failed:\n{proc.stderr[-4000:]}")
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("{")][-1])


def estimates(a: argparse.Namespace, budget: float | None):
    """gandist estimate's report for the benchmark's config on 2 ranks (fp32)."""
    from gandist.config import load_config
    from gandist.planning.plan import plan

    cfg = load_config(None, [o for o in overrides(a, "zero3", "runs") if not o.startswith("strategy.")])
    return plan(cfg, 2, "fp32", budget)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large", action="store_true", help="(b): 600 M parameters, ZeRO-3 only, with --checkpoint")
    p.add_argument(
        "--strategies", default="", help="comma list of ddp, zero1, zero2, zero3 (default: all; --large: zero3)"
    )
    p.add_argument("--steps", type=int, default=3, help="training iterations per run")
    p.add_argument("--micro-batch", type=int, default=2, help="images per rank per step")
    p.add_argument("--checkpoint", action="store_true", help="also time a checkpoint save and load")
    p.add_argument("--budget", default="", help="memory per rank for the planner (default: total RAM / 2)")
    p.add_argument("--set", nargs="*", default=[], help="more config overrides (key=value)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a, rest = p.parse_known_args()
    if a.worker:
        a.overrides = rest
        worker(a)
        return
    from gandist.planning.plan import format_report, parse_bytes, size

    if a.large:
        a.checkpoint = True
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    budget = parse_bytes(a.budget) if a.budget else total / 2
    report = estimates(a, budget)
    print(format_report(report), flush=True)
    names = a.strategies.split(",") if a.strategies else (["zero3"] if a.large else ["ddp", "zero1", "zero2", "zero3"])
    est = {e.setting.strategy: e for e in report.table}
    refused = [s for s in ("ddp", "zero1", "zero2", "zero3") if est[s].peak > budget]
    if refused:
        print(f"refused by the planner at {size(budget)} per rank: {', '.join(refused)}", flush=True)
    rows = []
    for name in names:
        result = launch(a, name)
        e = est[name]
        for r in result["ranks"]:
            measured = max(r["setup"], r["training"])
            row = {
                "strategy": name,
                "rank": r["rank"],
                "setup_gib": round(r["setup"] / GIB, 3),
                "setup_est_gib": round(e.setup / GIB, 3),
                "training_gib": round(r["training"] / GIB, 3),
                "training_est_gib": round(e.training / GIB, 3),
                "peak_gib": round(measured / GIB, 3),
                "peak_est_gib": round(e.peak / GIB, 3),
                "ratio": round(measured / e.peak, 3),
                "step_s": round(r["step_s"], 1),
            }
            for key in ("save_s", "load_s"):
                if key in r:
                    row[key] = round(r[key], 1)
            for key in ("save_peak", "load_peak", "checkpoint_bytes"):
                if key in r:
                    row[key.replace("_bytes", "") + "_gib"] = round(r[key] / GIB, 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    worst = max(abs(r["ratio"] - 1) for r in rows)
    summary = {"params": report.params, "budget_gib": round(budget / GIB, 2), "refused": refused, "rows": len(rows)}
    summary.update(max_ratio_error=round(worst, 3), within_15_percent=worst <= 0.15)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
