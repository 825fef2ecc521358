#!/usr/bin/env python3
"""gandist's training throughput as a ratio to the hand-written loop, measured in the same run.

    python benchmarks/step_speed.py                       # DCGAN 32 px, batch 64, fp32 on this machine
    python benchmarks/step_speed.py --res 64 --batch 256 --precision bf16 --steps 100
    python benchmarks/step_speed.py --strategy zero2 --skip-train      # DeepSpeed ZeRO-2 engines, one process
    python benchmarks/step_speed.py --strategy zero3 --nproc 2         # 2 processes, --batch per process
    python benchmarks/step_speed.py --arch stylegan2 --skip-train      # gandist only: no reference loop for it
    python benchmarks/step_speed.py --compile --channels-last off      # torch.compile, contiguous weights

Three measurements, each in its own process with the same thread count, interleaved and repeated
(median of --repeats; the order rotates each repeat) so that machine noise hits all alike:

  plain      benchmarks/reference/plain_gan.py: one D step + one G step on a fixed random batch
  synthetic  gandist's own step (strategy, D phase, G phase, G_ema update) on a fixed random batch
  train      the whole `gandist train` job reading shards through the loader (--shards; default the
             embedded 32 px sample)
             (images/s from its stats.jsonl, first tick dropped as warm-up)
  train+X    the same with tracker X on (--tracking wandb: an offline W&B run)

Same model (DCGAN, width 64, 3 channels: the parameter counts of plain_gan.py), batch and
precision. --arch resnet or stylegan2 (width 64) measure gandist alone: plain_gan.py exists only for the
DCGAN, so those runs print gandist's numbers without a ratio. The fast-path settings follow gandist's
config: --channels-last auto (on for CUDA, off on CPU and under DeepSpeed; the plain loop gets the same
resolved value), fused Adam on CUDA, --malloc-tuning (train.malloc_tuning: auto keeps freed memory in
gandist's process on the CPU; off leaves glibc's defaults, which the plain loop always has), --compile
(gandist: train.compile with --compile-backend; the plain loop: its own --compile, inductor).
--strategy picks how gandist holds the nets (single, ddp, zero0-zero3: DeepSpeed engines); with
--nproc N the synthetic step runs on N processes (accelerate launch, --batch images per process) and
its images/s are per process, comparable with the one-process plain loop at the same batch.
Prints one JSON line per measurement (images/s and seconds per kimg), then one summary line with the
medians and their ratios, the best run of each mode and their ratios (ratio_best_*: on a shared machine
the fastest run is the least disturbed one; the same process varies by +-7% from run to run on the
2-core VM here), the [min, max] of the ratios within a repeat (*_range) and, for the synthetic step,
what rank 0 holds for G and D: parameter, fp32 master-copy and optimizer-state bytes (ZeRO shards them:
optimizer states / N from stage 1, parameters / N at stage 3) and its peak memory: on CUDA the allocated
memory after set-up and the peak (torch.cuda.max_memory_allocated), on CPU the worker process's peak
resident set size
(synthetic_peak_rss_mib, from getrusage: the whole process, Python and torch included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the speed reference: a hand-written DCGAN loop, the same on every machine
PLAIN = ROOT / "benchmarks" / "reference" / "plain_gan.py"


def synthetic_worker(a: argparse.Namespace) -> None:
    """Time gandist's step on a fixed batch (runs in a child process)."""
    import torch

    from gandist.config import load_config
    from gandist.models import build_nets
    from gandist.objectives.losses import get_losses
    from gandist.reporting.stats import TickStats
    from gandist.strategy import make_strategy
    from gandist.training.device import set_up_device
    from gandist.training.ema import ema_beta, make_ema, update_ema
    from gandist.training.optim import make_optimizer
    from gandist.training.phases import Phases
    from gandist.training.step import first_step_or_eager

    if a.threads:
        torch.set_num_threads(a.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg = load_config(
        None,
        [
            f"model.arch={a.arch}",
            f"model.resolution={a.res}",
            "model.channels=3",
            f"train.batch={a.batch * world}",
            f"train.precision={a.precision}",
            *fast_path_overrides(a),
            *strategy_overrides(a.strategy),
        ],
    )
    strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
    device = strategy.device
    # as the training loop does (loop.py): cudnn/TF32/malloc settings, channels_last (already resolved by main()
    # to true/false), fused Adam for the device
    channels_last = set_up_device(cfg.train, device.type, strategy.name)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    G, D = build_nets(cfg.model, cfg.train.seed)
    G, D = G.to(device, memory_format=fmt), D.to(device, memory_format=fmt)
    G_ema = make_ema(G)
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt, device.type))
    strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt, device.type))
    if cfg.train.compile:
        strategy.compile(cfg.train.compile_backend)
    phases = Phases(strategy, *get_losses("nonsaturating"), TickStats(device))
    real = (torch.rand(a.batch, 3, a.res, a.res, device=device) * 2 - 1).contiguous(memory_format=fmt)
    noise = torch.Generator(device=device).manual_seed(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory = (
        {"setup_allocated_mib": round(torch.cuda.memory_allocated(device) / 2**20, 1)} if device.type == "cuda" else {}
    )

    z_dim = cfg.model.z_dim

    def step(nimg: int) -> None:
        z_d = torch.randn(a.batch, z_dim, device=device, generator=noise)
        z_g = torch.randn(a.batch, z_dim, device=device, generator=noise)
        if nimg == 0:  # compiles under --compile: a failure falls back to eager, as in training
            first_step_or_eager(strategy, lambda: phases.step(real, z_d, z_g), print)
        else:
            phases.step(real, z_d, z_g)
        with strategy.gathered("G") as G_full:
            update_ema(G_ema, G_full, ema_beta(a.batch, nimg, 10.0, 0.05))

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
    if device.type == "cuda":
        memory["peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    else:  # the whole worker process (ru_maxrss: KiB on Linux)
        memory["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)
    held = held_mib(strategy)
    result = {"images_per_s": round(a.batch * a.steps / dt, 1), "step_ms": round(1000 * dt / a.steps, 3)}
    result.update(world_size=strategy.world_size, strategy=strategy.describe(), compiled=strategy.compiled)
    result.update(**held, **memory)
    if strategy.is_main:
        print(json.dumps(result))
    strategy.close()


def paired_range(mode: list[float], plain: list[float]) -> list[float]:
    """[min, max] over the repeats of one mode's images/s divided by the plain loop's in the same repeat."""
    ratios = [m / p for m, p in zip(mode, plain)]
    return [round(min(ratios), 3), round(max(ratios), 3)]


def fast_path_overrides(a: argparse.Namespace) -> list[str]:
    """gandist config overrides for --channels-last (resolved by main() to on/off) and --compile."""
    out = [f"train.channels_last={'true' if a.channels_last == 'on' else 'false'}"]
    out.append(f"train.malloc_tuning={'auto' if a.malloc_tuning == 'auto' else 'false'}")
    if a.compile:
        out += ["train.compile=true", f"train.compile_backend={a.compile_backend}"]
    return out


def resolve_channels_last(a: argparse.Namespace) -> str:
    """--channels-last auto|on|off as gandist resolves train.channels_last here: 'on' or 'off'."""
    import torch

    from gandist.config import ConfigError
    from gandist.training.device import resolve_channels_last as resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    setting = {"auto": "auto", "on": True, "off": False}[a.channels_last]
    try:
        return "on" if resolve(setting, device, "deepspeed" if a.strategy.startswith("zero") else "ddp") else "off"
    except ConfigError as e:
        raise SystemExit(f"--channels-last on --strategy {a.strategy}: {e}") from None


def strategy_overrides(name: str) -> list[str]:
    """gandist config overrides for a --strategy choice."""
    if name.startswith("zero"):
        return ["strategy.name=deepspeed", f"strategy.zero_stage={name[4:]}"]
    return [f"strategy.name={name}"]


def held_mib(strategy) -> dict[str, float]:
    """MiB this rank holds for G and D: parameters (local shards under ZeRO-3), fp32 master copies that
    are not the parameters themselves (ZeRO's flat partitions), and optimizer states."""
    import torch

    out = {"param_mib": 0, "master_mib": 0, "optimizer_state_mib": 0}
    for name in ("G", "D"):
        params = list(strategy.module(name).parameters())
        own = {id(p) for p in params}
        out["param_mib"] += sum(getattr(p, "ds_tensor", p).numel() * p.element_size() for p in params)
        optimizer = strategy.optimizer(name)
        for group in optimizer.param_groups:
            out["master_mib"] += sum(q.numel() * q.element_size() for q in group["params"] if id(q) not in own)
        for state in optimizer.state.values():
            out["optimizer_state_mib"] += sum(
                t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor) and t.dim() > 0
            )
    return {k: round(v / 2**20, 3) for k, v in out.items()}


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
    if a.channels_last == "on":
        cmd.append("--channels-last")
    if a.compile:
        cmd.append("--compile")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=_child_env(a.threads)).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def _launch(nproc: int) -> list[str]:
    """How to start the synthetic worker: one process, or `accelerate launch` of nproc processes."""
    if nproc == 1:
        return [sys.executable]
    import socket

    import torch

    config = "gpus_1node.yaml" if torch.cuda.is_available() else "cpu_2proc.yaml"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    accelerate = str(Path(sys.executable).parent / "accelerate")
    config_file = str(ROOT / "launch" / config)
    return [
        accelerate,
        "launch",
        "--config_file",
        config_file,
        "--num_processes",
        str(nproc),
        "--main_process_port",
        str(port),
    ]


HELD: dict[str, float] = {}


def run_synthetic(a: argparse.Namespace) -> float:
    cmd = [
        *_launch(a.nproc),
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
        "--strategy",
        a.strategy,
        "--arch",
        a.arch,
        "--channels-last",
        a.channels_last,
        "--compile-backend",
        a.compile_backend,
        "--malloc-tuning",
        a.malloc_tuning,
    ]
    if a.compile:
        cmd.append("--compile")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(a.threads))
    if proc.returncode:
        raise SystemExit(f"synthetic worker failed:\n{proc.stderr[-3000:]}")
    out = proc.stdout
    for line in out.splitlines():
        if "WARNING train.compile" in line:
            print(line, file=sys.stderr)
    result = json.loads([x for x in out.strip().splitlines() if x.startswith("{")][-1])
    HELD.update({k: v for k, v in result.items() if k not in ("images_per_s", "step_ms")})
    return result["images_per_s"]


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
            f"model.arch={a.arch}",
            f"model.resolution={a.res}",
            f"train.batch={a.batch}",
            f"train.precision={a.precision}",
            f"train.kimg={total / 1000}",
            f"train.tick_kimg={warm_kimg}",
            f"train.snapshot_kimg={total}",
            "train.checkpoint_kimg=0",
            *fast_path_overrides(a),
            f"data.num_workers={a.workers}",
            f"data.shards={a.shards}",
            f"tracking.report_to={report_to}",
            *strategy_overrides(a.strategy),
        ]
        if a.res != 32 and not a.shards:
            raise SystemExit(
                f"the train mode reads the embedded 32 px shards: give --shards of {a.res} px images "
                "(gandist prepare SRC DIR --resolution N), use --res 32, or --skip-train"
            )
        env = {**_child_env(a.threads), "WANDB_MODE": "offline"}
        subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
        lines = [json.loads(x) for x in (Path(tmp) / "bench" / "stats.jsonl").read_text().splitlines()]
        # drop the warm-up tick (the first line); the rest: images shown / seconds taken
        shown = (lines[-1]["kimg"] - lines[0]["kimg"]) * 1000
        seconds = sum(t["sec_per_kimg"] * (t["kimg"] - prev["kimg"]) for prev, t in zip(lines, lines[1:]))
        return shown / seconds


def sec_per_kimg(images_per_s: float) -> float:
    """Seconds to show D a thousand images at this rate."""
    return round(1000 / max(images_per_s, 1e-9), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="dcgan", choices=["dcgan", "resnet", "stylegan2"], help="gandist's G and D")
    p.add_argument("--res", type=int, default=32, choices=[32, 64, 128])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument(
        "--channels-last",
        nargs="?",
        const="on",
        default="auto",
        choices=["auto", "on", "off"],
        help="auto (default): on for CUDA, off on CPU and under DeepSpeed, as gandist's train.channels_last; "
        "the bare flag means on",
    )
    p.add_argument(
        "--malloc-tuning",
        default="auto",
        choices=["auto", "off"],
        help="gandist's train.malloc_tuning (auto: on for the CPU); off: glibc's defaults, as the plain loop has",
    )
    p.add_argument("--compile", action="store_true", help="train.compile=true (and the plain loop's --compile)")
    p.add_argument("--compile-backend", default="inductor", help="gandist's train.compile_backend")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: as is)")
    p.add_argument("--workers", type=int, default=1, help="loader workers for --mode train")
    p.add_argument("--shards", default="", help="shards for the train mode (default: the embedded 32 px sample)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-train", action="store_true", help="only plain vs synthetic")
    p.add_argument(
        "--tracking",
        default="",
        choices=["", "wandb", "tensorboard"],
        help="also run the train mode with this tracker on (offline) and report the ratio to tracking off",
    )
    p.add_argument(
        "--strategy",
        default="single",
        choices=["single", "ddp", "zero0", "zero1", "zero2", "zero3"],
        help="how gandist holds G and D: one process, DDP, or DeepSpeed ZeRO stage 0-3 (one engine per net)",
    )
    p.add_argument("--nproc", type=int, default=1, help="processes for the synthetic step (--batch per process)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "synthetic":  # one rank of the launch main() checked: its world size is the launch's, not --nproc
        synthetic_worker(a)
        return
    if a.strategy in ("single", "ddp") and (a.nproc > 1) != (a.strategy == "ddp"):
        raise SystemExit("--strategy ddp needs --nproc >= 2, --strategy single needs --nproc 1")
    if a.nproc > 1 and not a.skip_train:
        raise SystemExit("--nproc > 1 measures the synthetic step only: add --skip-train")
    a.channels_last = resolve_channels_last(a)
    with_plain = a.arch == "dcgan"  # plain_gan.py is a DCGAN: the other architectures have no reference loop
    if with_plain and not PLAIN.is_file():
        raise SystemExit(f"reference loop not found at {PLAIN}")
    runners = {"plain": run_plain} if with_plain else {}
    runners["synthetic"] = run_synthetic
    if not a.skip_train:
        runners["train"] = run_train
    if a.tracking:
        runners[f"train+{a.tracking}"] = lambda a: run_train(a, report_to=a.tracking)
    results: dict[str, list[float]] = {k: [] for k in runners}
    order = list(runners)
    for r in range(a.repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:  # rotated: no mode always runs first
            ips = runners[name](a)
            results[name].append(ips)
            line = {"repeat": r, "mode": name, "images_per_s": round(ips, 1), "sec_per_kimg": sec_per_kimg(ips)}
            print(json.dumps(line), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    best = {k: max(v) for k, v in results.items()}
    others = [k for k in results if k != "plain"] if with_plain else []
    summary = {
        "arch": a.arch,
        "res": a.res,
        "batch": a.batch,
        "strategy": a.strategy,
        "nproc": a.nproc,
        "precision": a.precision,
        "channels_last": a.channels_last,
        "compile": a.compile_backend if a.compile else False,
        "malloc_tuning": a.malloc_tuning,
        "threads": a.threads or "default",
        **{f"{k}_images_per_s": round(v, 1) for k, v in med.items()},
        **{f"{k}_sec_per_kimg": sec_per_kimg(v) for k, v in med.items()},
        **{f"ratio_{k}_to_plain": round(med[k] / med["plain"], 3) for k in others},
        # the fastest run of each mode: the least disturbed by other load on a shared machine
        **{f"{k}_best_images_per_s": round(v, 1) for k, v in best.items()},
        **{f"ratio_best_{k}_to_plain": round(best[k] / best["plain"], 3) for k in others},
        # the spread of the ratios within each repeat: the noise of this machine in this run
        **{f"ratio_{k}_to_plain_range": paired_range(results[k], results["plain"]) for k in others},
        **{f"synthetic_{k}": v for k, v in HELD.items()},
    }
    if not with_plain:
        summary["reference"] = f"none for {a.arch} (plain_gan.py is a DCGAN): gandist's numbers only, no ratio"
    if a.tracking and "train" in med:
        summary[f"ratio_tracking_{a.tracking}_on_to_off"] = round(med[f"train+{a.tracking}"] / med["train"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
