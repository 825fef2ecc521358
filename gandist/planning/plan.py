"""The estimate of a run per rank for each strategy, and the smallest setting that fits a memory budget.

counts      G, D, G_ema parameters, built on the meta device (no memory: 1B+ models on a laptop)
estimate    per strategy (one process; or DDP, ZeRO-1/2/3 on N ranks): the standing model states
            (accounting.py), the phases at a micro-batch (activations.py + transient gradients + the
            optimizer step), the set-up, and the peak
recommend   the first strategy in the order single | DDP, ZeRO-1, ZeRO-2, ZeRO-3 (each shards more and
            communicates more) with the largest micro-batch (the fewest gradient-accumulation steps) whose
            peak fits the budget; then the same with model.activation_checkpointing; else "does not fit"
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from gandist.config import Config, ConfigError
from gandist.models import build_nets
from gandist.planning.accounting import (
    NetSizes,
    Setting,
    ZeroBuffers,
    gathered_window,
    model_states,
    optimizer_step,
    set_up,
    transient_gradients,
)
from gandist.planning.activations import PhaseMemory, measure_phases
from gandist.strategy.zero_config import PERSISTENCE_THRESHOLD, bucket_elements

GIB = 2**30


def count_nets(cfg: Config, persistence_threshold: int = PERSISTENCE_THRESHOLD) -> dict[str, NetSizes]:
    """Parameter counts of G and D, built on the meta device (shapes only)."""
    with torch.device("meta"):
        G, D = build_nets(cfg.model, cfg.train.seed)
    out = {}
    for name, net in (("G", G), ("D", D)):
        sizes = [p.numel() for p in net.parameters()]
        out[name] = NetSizes(
            params=sum(sizes),
            persistent=sum(s for s in sizes if s <= persistence_threshold),
            largest=max(sizes),
            buffer_bytes=sum(b.numel() * b.element_size() for b in net.buffers()),
        )
    return out


def zero_buffers(cfg: Config) -> ZeroBuffers:
    """DeepSpeed's memory-sized settings as gandist's engines get them (zero_config.py), read from the
    DeepSpeed JSON where it gives them."""
    from gandist.strategy.launch import load_deepspeed_json

    data = load_deepspeed_json(cfg.strategy.deepspeed_config) if cfg.strategy.deepspeed_config else {}
    zero = data.get("zero_optimization", {})
    default = bucket_elements(cfg.strategy.bucket_mb)

    def value(key: str, fallback: int) -> int:
        v = zero.get(key, "auto")
        return fallback if v == "auto" else int(v)

    return ZeroBuffers(
        reduce_bucket=value("reduce_bucket_size", default),
        prefetch_bucket=value("stage3_prefetch_bucket_size", default),
        max_live=value("stage3_max_live_parameters", default),
        sub_group=value("sub_group_size", default),
        persistence_threshold=value("stage3_param_persistence_threshold", PERSISTENCE_THRESHOLD),
        overlap_comm=zero.get("overlap_comm"),  # None: DeepSpeed's default (on at ZeRO-3 only)
    )


@dataclass
class Estimate:
    """One strategy's bytes per rank at one micro-batch."""

    setting: Setting
    states: dict[str, float]
    phases: dict[str, float]
    setup: float
    checkpointing: bool = False

    @property
    def standing(self) -> float:
        return sum(self.states.values())

    @property
    def training(self) -> float:
        """Standing model states + the largest phase."""
        return self.standing + max(self.phases.values())

    @property
    def peak(self) -> float:
        return max(self.training, self.setup)


def estimate(
    nets: dict[str, NetSizes],
    activations: dict[str, PhaseMemory],
    setting: Setting,
    zero: ZeroBuffers,
) -> Estimate:
    """Bytes per rank of one strategy at one micro-batch (accounting.py's terms)."""
    z = replace(zero, overlap_comm=setting.strategy == "zero3") if zero.overlap_comm is None else zero
    z = z if setting.strategy.startswith("zero") else None
    G, D = nets["G"], nets["D"]
    n = setting.micro_batch
    phases = {
        "D phase": activations["D"].at(n) + transient_gradients(D, setting) + gathered_window(D, setting, z),
        "G phase": activations["G"].at(n)
        + transient_gradients(G, setting)
        + max(gathered_window(G, setting, z), gathered_window(D, setting, z)),
        "optimizer step": max(optimizer_step(net, setting, z) for net in nets.values()),
    }
    if "R1" in activations:
        phases["R1 phase"] = activations["R1"].at(n) + transient_gradients(D, setting) + gathered_window(D, setting, z)
    return Estimate(setting, model_states(nets, setting, z), phases, set_up(nets, setting, z))


def strategies_for(world: int) -> tuple[str, ...]:
    """The strategies to consider, in order of preference (least communication first)."""
    return ("single",) if world == 1 else ("ddp", "zero1", "zero2", "zero3")


def micro_batches(per_rank: int) -> list[int]:
    """Micro-batches that split a rank's batch evenly, largest first."""
    return [m for m in range(per_rank, 0, -1) if per_rank % m == 0]


@dataclass
class Report:
    """What `gandist estimate` prints."""

    world: int
    precision: str
    budget: float | None
    per_rank_batch: int
    nets: dict[str, NetSizes]
    table: list[Estimate]
    """Each strategy at the configured micro-batch (train.batch / world / strategy.gradient_accumulation)."""
    choice: Estimate | None = None
    tried: list[Estimate] = field(default_factory=list)

    @property
    def params(self) -> dict[str, int]:
        return {"G": self.nets["G"].params, "D": self.nets["D"].params, "G_ema": self.nets["G"].params}


def plan(cfg: Config, world: int, precision: str, budget: float | None) -> Report:
    """The estimate of every strategy for `cfg` on `world` ranks and, with a budget (bytes per rank), the
    recommendation. precision: the resolved train.precision (fp32, bf16, fp16)."""
    if cfg.train.batch % world:
        raise ConfigError(f"key 'train.batch' = {cfg.train.batch} does not split over {world} ranks")
    per_rank = cfg.train.batch // world
    accumulation = cfg.strategy.gradient_accumulation or 1
    if per_rank % accumulation:
        raise ConfigError(
            f"key 'strategy.gradient_accumulation' = {accumulation} does not split the {per_rank} images per rank"
        )
    zero = zero_buffers(cfg)
    nets = count_nets(cfg, zero.persistence_threshold)
    configured = cfg.model.activation_checkpointing
    acts = {configured: measure_phases(cfg, precision, per_rank)}
    table = [
        estimate(nets, acts[configured], Setting(s, world, per_rank // accumulation), zero)
        for s in strategies_for(world)
    ]
    for e in table:
        e.checkpointing = configured
    report = Report(world, precision, budget, per_rank, nets, table)
    if budget is None:
        return report
    report.choice, report.tried = recommend(nets, acts, world, per_rank, zero, budget)
    if report.choice is None and not configured:  # activation checkpointing: measured only when it is needed
        more = {True: measure_phases(cfg, precision, per_rank, checkpointing=True)}
        report.choice, tried = recommend(nets, more, world, per_rank, zero, budget)
        report.tried += tried
    return report


def recommend(
    nets: dict[str, NetSizes],
    activations: dict[bool, dict[str, PhaseMemory]],
    world: int,
    per_rank: int,
    zero: ZeroBuffers,
    budget: float,
) -> tuple[Estimate | None, list[Estimate]]:
    """The first strategy and largest micro-batch whose peak fits `budget` (bytes per rank), without activation
    checkpointing (activations[False]) before with it (activations[True]), whichever are given; and the
    closest setting of each strategy tried (its smallest micro-batch) when none fits."""
    tried = []
    for checkpointing in sorted(activations):
        for name in strategies_for(world):
            for micro in micro_batches(per_rank):
                e = estimate(nets, activations[checkpointing], Setting(name, world, micro), zero)
                e.checkpointing = checkpointing
                if e.peak <= budget:
                    return e, tried
            tried.append(e)
    return None, tried


def report_json(report: Report) -> dict:
    """The report as plain data (bytes per rank)."""

    def one(e: Estimate) -> dict:
        return {
            "strategy": e.setting.strategy,
            "micro_batch": e.setting.micro_batch,
            "activation_checkpointing": e.checkpointing,
            "states": e.states,
            "phases": e.phases,
            "standing": e.standing,
            "setup": e.setup,
            "peak": e.peak,
        }

    out = {
        "params": report.params,
        "world_size": report.world,
        "precision": report.precision,
        "per_rank_batch": report.per_rank_batch,
        "strategies": {e.setting.strategy: one(e) for e in report.table},
        "budget": report.budget,
    }
    if report.budget is not None:
        out["recommendation"] = one(report.choice) if report.choice else None
    return out


def size(value: float) -> str:
    """Bytes with a binary unit, three significant figures or so: 1.00 KiB, 512.00 MiB, 14.89 GiB."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


def format_report(report: Report) -> str:
    """The human-readable estimate: counts, the per-strategy table, the recommendation."""
    p = report.params
    unit, scale = ("GiB", 2**30) if max(e.peak for e in report.table) >= 2**30 else ("MiB", 2**20)
    lines = [
        f"parameters: G {p['G']:,}  D {p['D']:,}  G_ema {p['G_ema']:,}  (G + D {p['G'] + p['D']:,})",
        f"{report.world} rank(s), {report.per_rank_batch} images per rank per step, precision {report.precision}; "
        f"{unit} per rank:",
    ]
    terms = list(report.table[0].states) + list(report.table[0].phases)
    lines.append(f"  {'':<16}" + "".join(f"{e.setting.strategy:>10}" for e in report.table))
    rows = [(t, [e.states.get(t, e.phases.get(t, 0.0)) for e in report.table]) for t in terms]
    rows += [("set-up", [e.setup for e in report.table]), ("peak", [e.peak for e in report.table])]
    for term, values in rows:
        lines.append(f"  {term:<16}" + "".join(f"{v / scale:>10.2f}" for v in values))
    micro = report.table[0].setting.micro_batch
    checkpointing = "on" if report.table[0].checkpointing else "off"
    lines.append(f"  (micro-batch {micro}, activation checkpointing {checkpointing})")
    if report.budget is None:
        return "\n".join(lines)
    budget = size(report.budget)
    if report.choice is not None:
        c = report.choice
        accumulation = report.per_rank_batch // c.setting.micro_batch
        ds = {"single": "", "ddp": "strategy.name=ddp"}.get(
            c.setting.strategy, f"strategy.name=deepspeed strategy.zero_stage={c.setting.strategy[-1]}"
        )
        lines.append(
            f"fits {budget} per rank: {c.setting.strategy}, micro-batch {c.setting.micro_batch}, "
            f"gradient accumulation {accumulation}"
            + (", activation checkpointing" if c.checkpointing else "")
            + f" (peak {size(c.peak)})"
        )
        overrides = [ds, f"strategy.gradient_accumulation={accumulation}" if accumulation > 1 else ""]
        overrides.append("model.activation_checkpointing=true" if c.checkpointing else "")
        lines.append("  overrides: " + (" ".join(o for o in overrides if o) or "none"))
    else:
        closest = min(report.tried, key=lambda e: e.peak)
        lines.append(
            f"does not fit {budget} per rank: the smallest peak is {closest.setting.strategy} at "
            f"micro-batch {closest.setting.micro_batch}"
            + (" with activation checkpointing" if closest.checkpointing else "")
            + f", {size(closest.peak)} (model states {size(closest.standing)}); use more ranks, more memory "
            "per device, or a smaller model"
        )
    return "\n".join(lines)


def parse_bytes(text: str) -> float:
    """'80GiB', '80GB', '512MiB', '24G' -> bytes (GB/MB: powers of 10; GiB, MiB and a bare G or M: powers of 2)."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
    units.update({"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "b": 1, "": 1})
    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtibB")
    unit = raw[len(number) :]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ConfigError(f"memory size {text!r} is not a number with a unit such as 80GiB, 80GB or 512MiB") from None
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"memory size {text!r} must be positive")
    return value
