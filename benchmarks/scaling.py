#!/usr/bin/env python3
"""A weak-scaling model for gandist, checked against real 1- vs 2-process runs on this machine.

Model. Each iteration steps D then G; each step all-reduces that net's gradients (fp32, 4 bytes
per parameter). With g GPUs per node and n nodes, a hierarchical ring all-reduce (NCCL-style:
reduce-scatter in the node, ring across nodes on the node's NIC, all-gather in the node) of B
bytes takes

    t(B) = 2 (g-1)/g * B / bw_intra  +  2 (n-1)/n * B / bw_inter  +  latency * steps

ZeRO changes the volume: stages 1 and 2 reduce-scatter gradients and all-gather updated
parameters (the same 2(N-1)/N * B as an all-reduce); stage 3 also all-gathers parameters for the
forward and the backward pass (3(N-1)/N * B). A fraction `overlap` of the communication hides
behind the backward pass (DDP's gradient buckets). Weak-scaling efficiency = t_compute /
(t_compute + (1 - overlap) * t_comm).

Check (`--measure`): the same gandist step on 1 and 2 CPU processes (gloo, one thread each, the
same batch per rank), plus a gloo all-reduce of the G and D gradient sizes measured alone;
predicted overhead = all-reduce time / 1-process step time, against the measured overhead
(2-process step time / 1-process step time - 1).

    python benchmarks/scaling.py                         # table for DCGAN 64 px, batch 256 per GPU
    python benchmarks/scaling.py --measure               # + prediction vs measurement on this CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINKS_GBIT = {"NVLink (intra-node only)": None, "100 Gb/s": 100, "200 Gb/s": 200, "400 Gb/s": 400}
VOLUME = {"ddp": 2.0, "zero1": 2.0, "zero2": 2.0, "zero3": 3.0}  # x (N-1)/N x gradient bytes


def comm_seconds(
    grad_bytes: float,
    gpus_per_node: int,
    nodes: int,
    bw_intra: float,
    bw_inter: float | None,
    volume: float,
    latency_s: float = 20e-6,
) -> float:
    """Seconds of collective communication per all-reduce-like exchange of `grad_bytes`."""
    g, n = gpus_per_node, nodes
    t = volume * (g - 1) / g * grad_bytes / bw_intra if g > 1 else 0.0
    if n > 1:
        if bw_inter is None:
            return float("inf")
        t += volume * (n - 1) / n * grad_bytes / bw_inter
    steps = 2 * (g - 1) + 2 * (n - 1)
    return t + latency_s * steps


def efficiency(
    step_s: float,
    params: tuple[int, int],
    gpus_per_node: int,
    nodes: int,
    bw_intra: float,
    bw_inter: float | None,
    strategy: str,
    overlap: float,
) -> float:
    """Predicted weak-scaling efficiency (1.0 = no overhead) of one D+G iteration."""
    t_comm = sum(comm_seconds(4 * p, gpus_per_node, nodes, bw_intra, bw_inter, VOLUME[strategy]) for p in params)
    return step_s / (step_s + (1 - overlap) * t_comm)


def dcgan_params(res: int) -> tuple[int, int]:
    from gandist.models import Discriminator, Generator

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(Generator(res)), count(Discriminator(res))


def table(step_s: float, params: tuple[int, int], overlap: float, nvlink_gbyte: float) -> list[dict]:
    rows = []
    for strategy in VOLUME:
        for link, gbit in LINKS_GBIT.items():
            bw_inter = gbit * 1e9 / 8 if gbit else None
            row = {"strategy": strategy, "link": link}
            for nodes in (1, 2, 4, 8, 16, 32, 64):
                e = efficiency(step_s, params, 8, nodes, nvlink_gbyte * 1e9, bw_inter, strategy, overlap)
                row[f"{nodes}x8"] = round(e, 3)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Measurement on this machine (gloo, CPU).

_WORKER = r"""
import json, os, sys, time, torch
torch.set_num_threads(1)
from gandist.config import load_config
from gandist.loop import Phases, build_nets, make_optimizer
from gandist.losses import get_losses
from gandist.strategy import Strategy, make_accelerator
from gandist.tracking import TickStats
res, batch, steps, warmup, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = load_config(None, [f"model.resolution={res}", "model.channels=3", "faults.nan_guard=false"])
s = Strategy(make_accelerator(cfg.strategy), "fp32")
G, D = build_nets(cfg)
s.add("G", G, make_optimizer(G.parameters(), cfg.G_opt)); s.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
ph = Phases(s, *get_losses("nonsaturating"), TickStats(s.device))
real = torch.rand(batch, 3, res, res) * 2 - 1
def step():
    ph.d_phase(real, torch.randn(batch, 100)); ph.g_phase(torch.randn(batch, 100))
for _ in range(warmup): step()
s.barrier(); t0 = time.perf_counter()
for _ in range(steps): step()
s.barrier(); dt = (time.perf_counter() - t0) / steps
ar = None
if s.world_size > 1:
    grads = [torch.zeros(sum(p.numel() for p in m.parameters())) for m in (G, D)]
    for g in grads: torch.distributed.all_reduce(g)
    s.barrier(); t0 = time.perf_counter()
    for _ in range(steps):
        for g in grads: torch.distributed.all_reduce(g)
    ar = (time.perf_counter() - t0) / steps
if s.is_main:
    json.dump({"step_s": dt, "allreduce_s": ar, "world": s.world_size}, open(out, "w"))
s.close()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(res: int, batch: int, steps: int, warmup: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(_WORKER)
        results = {}
        for world in (1, 2):
            out = Path(tmp) / f"w{world}.json"
            args = [str(res), str(batch), str(steps), str(warmup), str(out)]
            if world == 1:
                cmd = [sys.executable, str(script), *args]
            else:
                cmd = [
                    str(Path(sys.executable).parent / "accelerate"),
                    "launch",
                    "--config_file",
                    str(ROOT / "launch/cpu_2proc.yaml"),
                    "--main_process_port",
                    "29555",
                    str(script),
                    *args,
                ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            results[world] = json.loads(out.read_text())
    t1, t2, ar = results[1]["step_s"], results[2]["step_s"], results[2]["allreduce_s"]
    return {
        "res": res,
        "batch_per_rank": batch,
        "step_s_1proc": round(t1, 4),
        "step_s_2proc": round(t2, 4),
        "allreduce_s_G_plus_D": round(ar, 4),
        "measured_overhead": round(t2 / t1 - 1, 3),
        "predicted_overhead": round(ar / t1, 3),
        "prediction_error": round((ar / t1) / max(t2 / t1 - 1, 1e-9) - 1, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=64)
    p.add_argument(
        "--step-ms",
        type=float,
        default=15.3,
        help="measured single-GPU step time (DESIGN.md: H100, DCGAN 64 px, batch 1024, bf16 + channels_last, 15.3 ms)",
    )
    p.add_argument("--nvlink-gbyte", type=float, default=450.0, help="intra-node bus bandwidth per GPU, GB/s")
    p.add_argument("--overlap", type=float, default=0.0, help="fraction of communication hidden by backward")
    p.add_argument("--measure", action="store_true", help="also run 1 vs 2 CPU processes here")
    p.add_argument("--measure-res", type=int, default=32)
    p.add_argument("--measure-batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args()
    params = dcgan_params(a.res)
    print(
        json.dumps(
            {
                "model": f"DCGAN {a.res} px",
                "params_G": params[0],
                "params_D": params[1],
                "step_ms": a.step_ms,
                "overlap": a.overlap,
            }
        )
    )
    for row in table(a.step_ms / 1000, params, a.overlap, a.nvlink_gbyte):
        print(json.dumps(row))
    if a.measure:
        t0 = time.perf_counter()
        result = measure(a.measure_res, a.measure_batch, a.steps, 3)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"check": "gloo CPU, 1 vs 2 processes", **result}))


if __name__ == "__main__":
    main()
