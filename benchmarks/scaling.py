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

Check (`--measure`): gandist's DDP step on 2 CPU processes (gloo, one thread each, the same batch per
rank) against 1 process alone. The prediction uses only parts measured apart from the 2-process run
(see "Measurement" below): phase times of two independent processes running at once (compute and
stragglers) and the model's all-reduce time with this machine's fitted bandwidth and latency.
Overhead = 2-process step time / 1-process step time - 1, predicted vs measured, medians of rounds.

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


def dcgan_params(res: int, channels: int = 3) -> tuple[int, int]:
    from gandist.models import Discriminator, Generator

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return count(Generator(res, channels=channels)), count(Discriminator(res, channels=channels))


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
#
# The 2-process prediction is built from parts measured separately, never from the 2-process run:
#   compute   each rank's D-phase and G-phase times when the two ranks run as independent processes
#             at the same time (on a 2-core machine they share caches and memory bandwidth; on a
#             GPU node each rank has its own device and this equals the 1-process time)
#   sync      at each collective (a DDP forward's buffer broadcast, a backward's all-reduce) the
#             ranks wait for the slowest: the stretches between collectives, timed in those
#             independent runs, count with the max over ranks instead of their mean (stragglers)
#   comm      comm_seconds() above for G's and D's gradient bytes, with this machine's all-reduce
#             bandwidth and latency fitted to gloo all-reduces of a few sizes, plus one latency per
#             extra collective (DDP's gradient buckets, its BatchNorm buffer broadcasts); no overlap
#             (on a CPU the all-reduce competes with backward for the same cores)

_WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(1)
from gandist.config import load_config
from gandist.models import build_nets
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases
from gandist.objectives.losses import get_losses
from gandist.strategy import Strategy, make_accelerator
from gandist.reporting.stats import TickStats
res, batch, steps, warmup, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cfg = load_config(None, [f"model.resolution={res}", "model.channels=3", "faults.nan_guard=false"])
s = Strategy(make_accelerator(cfg.strategy), "fp32")
G, D = build_nets(cfg.model, cfg.train.seed)
s.add("G", G, make_optimizer(G.parameters(), cfg.G_opt)); s.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
ph = Phases(s, *get_losses("nonsaturating"), TickStats(s.device))
real = torch.rand(batch, 3, res, res) * 2 - 1
# Each DDP forward broadcasts BatchNorm buffers and each backward ends in the gradient all-reduce:
# both are points where the ranks wait for each other. Time the stretches between them: marks at
# every forward of a net being trained (the frozen D of the G phase is a plain module: no collective).
marks = []
def mark(module, args):
    if next(module.parameters()).requires_grad: marks.append(time.perf_counter())
for net in (G, D): net.register_forward_pre_hook(mark)
segments = []
for i in range(warmup + steps):
    marks.clear(); t0 = time.perf_counter(); ph.d_phase(real, torch.randn(batch, 100))
    t1 = time.perf_counter(); d_marks = list(marks); marks.clear(); ph.g_phase(torch.randn(batch, 100))
    t2 = time.perf_counter()
    points = [t0, *d_marks, t1, *marks, t2]
    if i >= warmup:
        segments.append([b - a for a, b in zip(points, points[1:])])
result = {"segments": segments, "world": s.world_size}
if s.world_size > 1:  # all-reduce of a few sizes, for bandwidth and latency
    result["allreduce"] = {}
    for numel in (1, 2**16, 2**19, 2**21):
        x = torch.zeros(numel)
        for _ in range(3): torch.distributed.all_reduce(x)
        s.barrier(); t0 = time.perf_counter()
        for _ in range(steps): torch.distributed.all_reduce(x)
        result["allreduce"][4 * numel] = (time.perf_counter() - t0) / steps
if s.is_main:
    json.dump(result, open(out, "w"))
s.close()
"""

DDP_FIRST_BUCKET_BYTES, DDP_BUCKET_BYTES = 1 << 20, 25 << 20
DDP_FORWARDS_PER_STEP = 4  # G (D phase, no grad), D on reals, D on fakes, G (G phase): one buffer broadcast each


def ddp_buckets(grad_bytes: int) -> int:
    """How many all-reduces DDP issues for one net's gradients (a small first bucket, then 25 MiB ones)."""
    rest = max(0, grad_bytes - DDP_FIRST_BUCKET_BYTES)
    return 1 + -(-rest // DDP_BUCKET_BYTES)


def fit_allreduce(times: dict[int, float]) -> tuple[float, float]:
    """Least-squares fit of t = latency + bytes / bandwidth to measured all-reduce times; (latency s, bytes/s)."""
    x = [float(b) for b in times]
    y = [times[b] for b in times]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
    return max(my - slope * mx, 0.0), 1.0 / slope


def synced_step(ranks: list[dict]) -> float:
    """Mean step time when every stretch between collectives waits for the slowest rank.

    Each rank's "segments" holds, per step, the times between its collectives (measured in
    independent runs); the ranks' i-th steps are paired.
    """
    steps = min(len(r["segments"]) for r in ranks)
    total = 0.0
    for i in range(steps):
        total += sum(max(times) for times in zip(*(r["segments"][i] for r in ranks)))
    return total / steps


def mean_step(rank: dict) -> float:
    return sum(sum(step) for step in rank["segments"]) / len(rank["segments"])


def predict(
    alone: dict, together: list[dict], allreduce: dict[int, float], params: tuple[int, int], world: int = 2
) -> dict:
    """The model's 2-process step time and overhead, from its separately measured parts."""
    t1 = mean_step(alone)
    compute = sum(mean_step(r) for r in together) / len(together)
    synced = synced_step(together)
    latency, bandwidth = fit_allreduce(allreduce)
    per_hop = latency / (2 * (world - 1))  # comm_seconds counts 2 (g - 1) latency hops per all-reduce
    comm = sum(comm_seconds(4 * p, world, 1, bandwidth, None, VOLUME["ddp"], per_hop) for p in params)
    extra_calls = sum(ddp_buckets(4 * p) - 1 for p in params) + DDP_FORWARDS_PER_STEP
    comm += extra_calls * latency
    return {
        "step_s_1proc": t1,
        "compute_s": compute,
        "sync_s": synced - compute,
        "comm_s": comm,
        "allreduce_latency_s": latency,
        "allreduce_gbyte_s": bandwidth / 1e9,
        "predicted_step_s": synced + comm,
        "predicted_overhead": (synced + comm) / t1 - 1,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(script: Path, args: list[str], out: Path, world: int, env: dict) -> subprocess.Popen:
    args = [*args, str(out)]
    if world == 1:
        cmd = [sys.executable, str(script), *args]
    else:
        launcher = str(Path(sys.executable).parent / "accelerate")
        config = str(ROOT / "launch/cpu_2proc.yaml")
        port = str(_free_port())
        cmd = [launcher, "launch", "--config_file", config, "--main_process_port", port, str(script), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _wait(*procs: subprocess.Popen) -> None:
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{' '.join(proc.args)} failed:\n{err[-3000:]}")


def measure(res: int, batch: int, steps: int, warmup: int, repeats: int) -> dict:
    """Rounds of: one process alone; two independent processes at once; two DDP ranks. Medians over rounds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    params = dcgan_params(res, channels=3)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "worker.py"
        script.write_text(_WORKER)
        args = [str(res), str(batch), str(steps), str(warmup)]
        for r in range(repeats):
            out = {k: Path(tmp) / f"{k}{r}.json" for k in ("alone", "a", "b", "ddp")}
            _wait(_run(script, args, out["alone"], 1, env))
            _wait(_run(script, args, out["a"], 1, env), _run(script, args, out["b"], 1, env))
            _wait(_run(script, args, out["ddp"], 2, env))
            got = {k: json.loads(p.read_text()) for k, p in out.items()}
            allreduce = {int(b): t for b, t in got["ddp"]["allreduce"].items()}
            row = predict(got["alone"], [got["a"], got["b"]], allreduce, params)
            row["measured_step_s"] = mean_step(got["ddp"])
            row["measured_overhead"] = row["measured_step_s"] / row["step_s_1proc"] - 1
            row.update({f"allreduce_s_{b}B": t for b, t in allreduce.items()})
            rounds.append(row)
    median = {k: sorted(r[k] for r in rounds)[len(rounds) // 2] for k in rounds[0]}
    result = {"res": res, "batch_per_rank": batch, "params_G_D": params, "rounds": repeats}
    result.update({k: round(v, 5) for k, v in median.items()})
    result["prediction_error"] = round(median["predicted_overhead"] / median["measured_overhead"] - 1, 3)
    result["per_round"] = [
        {"measured": round(r["measured_overhead"], 3), "predicted": round(r["predicted_overhead"], 3)} for r in rounds
    ]
    return result


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
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3, help="measurement rounds (medians are reported)")
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
        result = measure(a.measure_res, a.measure_batch, a.steps, 5, a.repeats)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps({"check": "gloo CPU, 1 vs 2 processes", **result}))


if __name__ == "__main__":
    main()
