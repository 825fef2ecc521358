"""G_ema under ZeRO-3 against DDP, and what each rank holds, in one 2-process launch; rank 0 saves the results.

    accelerate launch --config_file launch/cpu_2proc.yaml tests/dist/zero3_ema.py OUT     # writes OUT.<case>

For DDP and ZeRO-3 (every parameter partitioned; and DeepSpeed's default persistence threshold, which
keeps small parameters whole), from the same seeded weights on the same per-rank batches: three D/G steps
with a G_ema update after each (beta 0.5, so G_ema moves visibly), then
- G_ema's full weights, gathered one parameter at a time, and G_ema's images of a fixed noise (under ZeRO-3
  every rank runs G's module on G_ema's partitions);
- which tensors of the process, other than G's own parameters, have the shape of one of G's parameters (a
  full copy of G), taken after the steps and EMA updates: under ZeRO-3 there must be none;
- a checkpoint written by every rank (ZeRO-3: one partition file per rank, nothing gathered), G_ema
  consolidated from it one parameter at a time, and a fresh strategy restoring G_ema from it.
"""

import gc
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.utils import gather_object

from gandist.config import StrategyConfig, load_config
from gandist.models import build_nets
from gandist.objectives.losses import get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator, plan_strategy
from gandist.strategy.zero import ZeroStrategy
from gandist.training import checkpoint
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases

SHARD_ALL = str(Path(__file__).with_name("zero3_shard_all.json"))
BATCH = 8
cfg = load_config(None, ["model.arch=stylegan2", "model.g_width=4", "model.d_width=4", "model.z_dim=8"])
accelerator = make_accelerator(cfg.strategy)
world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
gen = torch.Generator().manual_seed(5)
REAL = torch.rand(3, BATCH, 1, 32, 32, generator=gen) * 2 - 1
Z = torch.randn(3, 2, BATCH, 8, generator=gen)
GRID = torch.randn(5, 8, generator=gen)  # 5: no parameter of G has this shape
MINE = slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def build(kind: str) -> Strategy:
    if kind == "ddp":
        strategy = Strategy(accelerator, "fp32")
    else:
        s_cfg = StrategyConfig(name="deepspeed", zero_stage=3, deepspeed_config=SHARD_ALL if kind == "zero3" else "")
        strategy = ZeroStrategy(accelerator, plan_strategy(s_cfg, "fp32", world, {}), BATCH)
    G, D = build_nets(cfg.model, cfg.train.seed)
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt))
    strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
    strategy.add_ema("G_ema", "G")
    return strategy


def full_weights(strategy: Strategy, name: str) -> dict[str, torch.Tensor]:
    """The EMA's full weights, gathered one parameter at a time (a collective under ZeRO-3)."""
    out = {pname: p.clone() for pname, p in strategy.full_parameters(name)}
    with strategy.ema(name) as module:
        out.update({k: b.detach().clone() for k, b in module.named_buffers()})
    return out


def full_copies_of(shapes: set[tuple[int, ...]], own: list[torch.nn.Parameter]) -> list[tuple[int, ...]]:
    """Shapes of the tensors alive in this process that have the shape of one of G's parameters, other than the
    nets' parameters themselves (whole ones: DeepSpeed keeps parameters below its persistence threshold whole)."""
    gc.collect()
    mine = {id(p) for p in own}
    return [
        tuple(o.shape)
        for o in gc.get_objects()
        if isinstance(o, torch.Tensor) and tuple(o.shape) in shapes and id(o) not in mine
    ]


def run_case(kind: str) -> dict:
    strategy = build(kind)
    phases = Phases(strategy, *get_losses("nonsaturating"), TickStats(device))
    torch.manual_seed(11 + rank)  # noise inputs: the same per rank in every case
    for i in range(3):
        phases.step(REAL[i][MINE], Z[i, 0][MINE], Z[i, 1][MINE])
        strategy.update_ema("G_ema", 0.5)
    G_params = list(strategy.module("G").parameters())
    own = G_params + list(strategy.module("D").parameters())  # D has parameters of the same shapes
    case = {"full_copies": gather_object([full_copies_of(G_shapes, own)])}
    case["G_ema"] = full_weights(strategy, "G_ema")
    with strategy.ema("G_ema") as G_ema:
        torch.manual_seed(3)  # the same noise inputs on every rank
        case["images"] = G_ema(GRID)
    if isinstance(strategy, ZeroStrategy):
        ema = strategy.emas["G_ema"]
        case["ema_numel"] = sum(t.numel() for t in ema.tensors)
        case["G_numel"] = sum(p.ds_numel for p in G_params)
        case["G_live_numel"] = sum(p.data.numel() for p in G_params if not p.ds_persist)  # released: 0
    run_dir = Path(gather_object([tempfile.mkdtemp(prefix="zero3_ema_") if rank == 0 else ""])[0])
    state = strategy.checkpoint_state()  # buffers synced from rank 0
    case["digest"] = gather_object([strategy.digest("G_ema")])
    saved = checkpoint.save_checkpoint(
        run_dir, 1, lambda: state, {}, rank, strategy.all_ok, collective_save=strategy.save_engine_states
    )
    shared, _ = checkpoint.load_checkpoint(saved, rank)
    case["consolidated"] = checkpoint.net_state(saved, shared, "G_ema")
    case["files"] = sorted(p.name for p in saved.iterdir())
    fresh = build(kind)
    fresh.load_state(saved, shared)
    case["reloaded"] = full_weights(fresh, "G_ema")
    return case


G_shapes = {tuple(p.shape) for p in build_nets(cfg.model, 0)[0].parameters() if p.dim() >= 2}
for kind in ("zero3", "zero3_default", "ddp"):  # DDP last: the accelerator keeps its wrappers
    case = run_case(kind)
    if rank == 0:  # written out, not kept: the next case's look for full copies must not find these
        torch.save(case, f"{sys.argv[1]}.{kind}")
    del case
    gc.collect()  # the case's engines are freed here, on both ranks together
    accelerator.wait_for_everyone()
torch.distributed.destroy_process_group()
