"""Memory per rank of a GAN under one process, DDP and DeepSpeed ZeRO-1/2/3: the ZeRO paper's accounting, for gandist.

The ZeRO paper (Rajbhandari et al. 2020) counts the model states of mixed-precision Adam training of Psi
parameters on N ranks as 2 Psi (fp16 weights) + 2 Psi (fp16 gradients) + K Psi (K = 12: an fp32 master copy,
Adam's two moments), and shards them by stage:

    DDP       (2 + 2 + K) Psi          = 16 Psi
    ZeRO-1    2 Psi + 2 Psi + K Psi / N          (optimizer states sharded)
    ZeRO-2    2 Psi + (2 + K) Psi / N            (+ gradients)
    ZeRO-3    (2 + 2 + K) Psi / N                (+ weights)

gandist trains fp32 weights inside torch autocast for every strategy (docs/design.md: DeepSpeed's
half-precision sections break BatchNorm nets), so here weights and gradients are 4 bytes, Adam's moments 8
and there is no separate master copy, except where DeepSpeed makes one anyway: ZeRO-1/2 clone their fp32
partition of the weights even when the weights are fp32 (4 Psi / N); ZeRO-3 reuses it. Per rank, for each
net (G, D) of Psi parameters, in bytes:

    term          one process   DDP       ZeRO-1       ZeRO-2       ZeRO-3
    weights       4 Psi         4 Psi     4 Psi        4 Psi        4 Psi / N  (+ 4 P: the small parameters
                                                                                DeepSpeed keeps whole, P of them)
    gradients     (4 Psi)       4 Psi     (4 Psi)      4 Psi / N    4 Psi / N
    Adam m, v     8 Psi         8 Psi     8 Psi / N    8 Psi / N    8 Psi / N
    master copy   -             -         4 Psi / N    4 Psi / N    -
    G_ema (G)     4 Psi         4 Psi     4 Psi        4 Psi        4 Psi / N  (partitioned like G)

(gradients in brackets exist only from a phase's backward to its optimizer step: they are counted in the
phases below, not as a standing term). So DDP holds 16 Psi (+ 4 Psi_G for G_ema), ZeRO-1 8 Psi + 12 Psi / N,
ZeRO-2 4 Psi + 16 Psi / N, ZeRO-3 16 Psi / N. With DeepSpeed's own bf16/fp16 copies (not used by gandist)
weights and gradients would be 2 bytes and the master copy would exist at every stage: the paper's table.

DeepSpeed's own buffers, set from strategy.bucket_mb (zero_config.py) so that the estimate holds: each
engine keeps a gradient bucket of reduce_bucket_size elements (two with overlap_comm, ZeRO-3's default),
and ZeRO-3 gathers the parameters of the layers being run, up to stage3_max_live_parameters plus a
prefetch bucket (at least the largest parameter). Then, per micro-batch, the largest of:

    D phase      activations of the D phase (activations.py) + D's gradients where they are transient
    G phase      activations of the G phase (G and the frozen D) + G's gradients where transient
    R1 phase     as the D phase, with R1's activations (double backward)
    optimizer    a net's transient gradients + Adam's temporary (one tensor the size of what it steps:
                 torch's foreach Adam computes sqrt(v) out of place) + ZeRO-1/2's flattened gradient
                 partition, ZeRO-3's per sub-group (sub_group_size) flattened gradients

and, before training, the set-up: both nets built whole on every rank (4 Psi), then wrapped: DDP's
buckets, ZeRO-1/2's flat copy of each net in turn next to the original (4 Psi_net) and its master copy,
ZeRO-3's zeroed gradient buffer of a whole sub-group (4 min(Psi_net, N sub_group_size): DeepSpeed sizes it
by full parameters). The peak is the larger of set-up and training. Not counted: the process itself
(Python, torch, CUDA context), data loader workers, grids and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

FP32 = 4
ADAM = 8
STRATEGIES = ("single", "ddp", "zero1", "zero2", "zero3")


@dataclass(frozen=True)
class NetSizes:
    """What the accounting needs of one net (elements, not bytes)."""

    params: int
    persistent: int = 0
    """Elements in parameters ZeRO-3 keeps whole (at most stage3_param_persistence_threshold each)."""
    largest: int = 0
    """Elements of the largest parameter."""
    buffer_bytes: int = 0


@dataclass(frozen=True)
class ZeroBuffers:
    """DeepSpeed's sizes that cost memory (elements), as the engines get them (zero_config.py)."""

    reduce_bucket: int
    prefetch_bucket: int
    max_live: int
    sub_group: int
    persistence_threshold: int
    overlap_comm: bool


@dataclass(frozen=True)
class Setting:
    """How a run holds its nets: strategy, ranks, images per micro-batch per rank."""

    strategy: str
    world: int
    micro_batch: int


def model_states(nets: dict[str, NetSizes], s: Setting, z: ZeroBuffers | None) -> dict[str, float]:
    """The standing terms per rank in bytes: weights, gradients, optimizer, master, G_ema, engine buffers."""
    n, name = s.world, s.strategy
    total = sum(net.params for net in nets.values())
    G = nets["G"]
    sharded = n if name in ("zero1", "zero2", "zero3") else 1
    out = {
        "weights": FP32 * total if name != "zero3" else FP32 * (total / n + _whole(nets, n)),
        "gradients": {"ddp": FP32 * total, "zero2": FP32 * total / n, "zero3": FP32 * total / n}.get(name, 0.0),
        "optimizer": ADAM * total / sharded,
        "master": FP32 * total / n if name in ("zero1", "zero2") else 0.0,
        "G_ema": FP32 * G.params / (n if name == "zero3" else 1) + G.buffer_bytes,
        "buffers": sum(net.buffer_bytes for net in nets.values()),
    }
    out["engine_buckets"] = _buckets(nets, s, z)
    return out


def _whole(nets: dict[str, NetSizes], n: int) -> float:
    """Elements ZeRO-3 keeps whole besides their partitions."""
    return sum(net.persistent for net in nets.values()) * (1 - 1 / n)


def _buckets(nets: dict[str, NetSizes], s: Setting, z: ZeroBuffers | None) -> float:
    """Each DeepSpeed engine's gradient bucket(s): ZeRO-1/2 (contiguous_gradients) and ZeRO-3."""
    if z is None or s.strategy not in ("zero1", "zero2", "zero3"):
        return 0.0
    copies = 2 if z.overlap_comm else 1
    return sum(FP32 * copies * min(z.reduce_bucket, net.params) for net in nets.values())


def transient_gradients(net: NetSizes, s: Setting) -> float:
    """Gradients of a net that exist from its backward to its step and are not a standing term."""
    return FP32 * net.params if s.strategy in ("single", "zero0", "zero1") else 0.0


def gathered_window(net: NetSizes, s: Setting, z: ZeroBuffers | None) -> float:
    """ZeRO-3: a net's parameters gathered at once while its layers run (and one parameter's full gradient)."""
    if s.strategy != "zero3" or z is None:
        return 0.0
    partitioned = net.params - net.persistent
    window = min(partitioned, max(z.max_live, net.largest) + z.prefetch_bucket)
    return FP32 * (window + net.largest)


def optimizer_step(net: NetSizes, s: Setting, z: ZeroBuffers | None) -> float:
    """Transient bytes of one net's optimizer step, on top of the standing terms."""
    n = s.world
    if s.strategy in ("single", "ddp", "zero0"):
        return FP32 * net.params + transient_gradients(net, s)  # Adam's sqrt(v)
    if s.strategy in ("zero1", "zero2"):
        return 2 * FP32 * net.params / n + transient_gradients(net, s)  # flat gradient partition, Adam's temporary
    step = min(net.params / n, z.sub_group if z else net.params)
    return 2 * FP32 * step


def set_up(nets: dict[str, NetSizes], s: Setting, z: ZeroBuffers | None) -> float:
    """Peak bytes while the nets are built and wrapped, before the first step."""
    n, name = s.world, s.strategy
    total = sum(net.params for net in nets.values())
    whole = FP32 * total
    if name == "zero3":
        sub = max(min(net.params, n * (z.sub_group if z else net.params)) for net in nets.values())
        return whole + FP32 * sub + FP32 * total / n
    if name in ("zero1", "zero2"):
        largest = max(net.params for net in nets.values())
        return whole + FP32 * largest + FP32 * largest / n
    return whole + (FP32 * total if name == "ddp" else 0.0)
