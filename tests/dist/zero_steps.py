"""One D/G step under DDP and DeepSpeed ZeRO-0/1/2/3 in one 2-process launch; rank 0 saves every result.

    accelerate launch --config_file launch/cpu_2proc.yaml tests/dist/zero_steps.py OUT.pt
    python tests/dist/zero_steps.py OUT.pt fp32,bf16,fp16        # one GPU (tests/gpu): precisions to run

Every case starts from the same seeded weights and trains on the same per-rank batches (rank r takes
slice r of one global batch of 16), so ZeRO-k and DDP at world size 2 must agree. Each case records
the full (gathered) weights of G, D and G_ema, Adam's first moments ((1 - beta1) = 0.5 x the averaged
gradient after one step), the losses, a digest of the gathered weights from every rank, and how many
of G's parameters were really sharded (ZeRO-3 here shards even tiny ones: zero3_shard_all.json). Also:
- ZeRO-0; ZeRO-2 with the optimizer built by DeepSpeed from a JSON ("auto" values filled);
- clipping at a norm far below the gradients' under DDP, ZeRO-2 and ZeRO-3;
- gradient accumulation: 2 micro-batches of 4 per rank against 1 of 8, nets in eval mode (BatchNorm
  statistics fixed beforehand from the global batch) so that the micro-batches can hold different
  images;
- the non-finite guard: a NaN D loss on rank 1 only, under DDP and ZeRO-0/1/3;
- fp16 on CPU: 6 steps under DDP and ZeRO-0..3, recording which steps the loss scale skipped;
- resume: ZeRO-3 and ZeRO-1 save after one step (checkpoint.py with the engines' shards), step again;
  fresh engines load the checkpoint and repeat the second step.
"""

import os
import sys
import tempfile
from pathlib import Path

import torch
from accelerate.utils import gather_object
from deepspeed.utils import safe_get_full_optimizer_state

import gandist.strategy.base as strategy_base
from gandist.config import StrategyConfig, load_config
from gandist.models import build_nets
from gandist.objectives.losses import get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator, plan_strategy
from gandist.strategy.zero import ZeroStrategy
from gandist.training import checkpoint
from gandist.training.ema import make_ema, update_ema
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases
from gandist.training.state import param_digest

SHARD_ALL = str(Path(__file__).with_name("zero3_shard_all.json"))  # ZeRO-3 shards even tiny parameters
GLOBAL_BATCH = 16

cfg = load_config(None, ["model.g_width=8", "model.d_width=8", "model.z_dim=16"])
accelerator = make_accelerator(cfg.strategy)
world, rank = accelerator.num_processes, accelerator.process_index
gen = torch.Generator().manual_seed(123)
device = accelerator.device
REAL = (torch.rand(GLOBAL_BATCH, 1, 32, 32, generator=gen) * 2 - 1).to(device)
Z_D, Z_G = (
    torch.randn(GLOBAL_BATCH, 16, generator=gen).to(device),
    torch.randn(GLOBAL_BATCH, 16, generator=gen).to(device),
)
PRECISIONS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["fp32", "bf16"]
per_rank = GLOBAL_BATCH // world
MINE = slice(rank * per_rank, (rank + 1) * per_rank)


def make_strategy(
    stage: int | None, precision: str, accumulation: int = 1, clip: float = 0.0, ds_json: str = SHARD_ALL
) -> Strategy:
    if stage is None:
        return Strategy(accelerator, precision, accumulation, clip)
    s_cfg = StrategyConfig(name="deepspeed", zero_stage=stage, gradient_accumulation=accumulation, grad_clip=clip)
    s_cfg.deepspeed_config = ds_json
    return ZeroStrategy(accelerator, plan_strategy(s_cfg, precision, world, os.environ), GLOBAL_BATCH)


def fix_batchnorm(G: torch.nn.Module, D: torch.nn.Module) -> None:
    """Running statistics := those of the global batch, then eval mode: BatchNorm no longer mixes samples."""
    for m in list(G.modules()) + list(D.modules()):
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        D(G(Z_D)), D(REAL)
    G.eval(), D.eval()


def build(stage: int | None, precision: str, accumulation: int = 1, eval_mode: bool = False, clip: float = 0.0, **kw):
    strategy = make_strategy(stage, precision, accumulation, clip, **kw)
    G, D = (net.to(device) for net in build_nets(cfg.model, cfg.train.seed))
    if eval_mode:
        fix_batchnorm(G, D)
    G_ema = make_ema(G)
    strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt))
    strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
    return strategy, Phases(strategy, *get_losses("nonsaturating"), TickStats(strategy.device)), G_ema


def step(strategy: Strategy, phases: Phases, G_ema: torch.nn.Module) -> None:
    phases.step(REAL[MINE], Z_D[MINE], Z_G[MINE])
    with strategy.gathered("G") as G_full:
        update_ema(G_ema, G_full, 0.5)


def run_one(strategy: Strategy, phases: Phases, G_ema: torch.nn.Module):
    step(strategy, phases, G_ema)
    return strategy, phases, G_ema


def exp_avg(strategy: Strategy, name: str) -> list[torch.Tensor]:
    """Adam's first moment per parameter, full size (a collective under ZeRO)."""
    params = list(strategy.module(name).parameters())
    if isinstance(strategy, ZeroStrategy) and strategy.zero_stage > 0:  # ZeRO-0 keeps the torch optimizer as is
        return [safe_get_full_optimizer_state(p, "exp_avg").detach().cpu().clone() for p in params]
    return [strategy.optimizer(name).state[p]["exp_avg"].detach().cpu().clone() for p in params]


def record(strategy: Strategy, phases: Phases, G_ema: torch.nn.Module) -> dict:
    out = {
        "losses": phases.stats.means(strategy.reduce_mean),
        "G_ema": {k: v.detach().cpu().clone() for k, v in G_ema.state_dict().items()},
    }
    for name in ("G", "D"):
        strategy.sync_buffers(strategy.module(name))  # BatchNorm statistics are per rank until synced
        with strategy.gathered(name) as module:
            out[name] = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            digest = param_digest(module)
        out[f"digests_{name}"] = gather_object([digest])
        out[f"exp_avg_{name}"] = exp_avg(strategy, name)
    G_params = list(strategy.module("G").parameters())
    out["G_sharded"] = sum(p.numel() < getattr(p, "ds_numel", p.numel()) for p in G_params) / len(G_params)
    out["kind"] = type(strategy).__name__
    return out


results: dict = {"world": world}
for stage in (None, 1, 2, 3):
    for precision in PRECISIONS:
        strategy, phases, G_ema = build(stage, precision)
        step(strategy, phases, G_ema)
        results[(stage, precision)] = record(strategy, phases, G_ema)

results[(0, "fp32")] = record(*run_one(*build(0, "fp32")))
ds_adam = str(Path(__file__).with_name("zero2_deepspeed_adam.json"))  # DeepSpeed builds the optimizer, "auto" filled
results[("ds_adam", 2)] = record(*run_one(*build(2, "fp32", ds_json=ds_adam)))
for stage in (None, 2, 3):  # clipping at a norm far below the gradients' (about 1-10)
    results[("clip", stage)] = record(*run_one(*build(stage, "fp32", clip=0.01)))

for stage in (None, 2):
    for accumulation in (1, 2):
        strategy, phases, G_ema = build(stage, "fp32", accumulation, eval_mode=True)
        step(strategy, phases, G_ema)
        results[("accumulation", stage, accumulation)] = record(strategy, phases, G_ema)

for stage in (3, 1):
    run_dir = Path(tempfile.mkdtemp(prefix="zero_resume_")) if rank == 0 else None
    run_dir = Path(gather_object([str(run_dir)])[0])
    strategy, phases, G_ema = build(stage, "fp32")
    step(strategy, phases, G_ema)
    phases.stats.means(strategy.reduce_mean)  # the recorded losses are those of the second step only
    state = {**strategy.checkpoint_state(), "G_ema": G_ema.state_dict()}
    saved = checkpoint.save_checkpoint(
        run_dir,
        1,
        lambda state=state: state,
        {},
        rank,
        strategy.all_ok,
        collective_save=strategy.save_engine_states,
    )
    step(strategy, phases, G_ema)
    uninterrupted = record(strategy, phases, G_ema)
    strategy, phases, G_ema = build(stage, "fp32")
    shared, _ = checkpoint.load_checkpoint(saved, rank)
    strategy.load_state(saved, shared)
    G_ema.load_state_dict(shared["G_ema"])
    step(strategy, phases, G_ema)
    resumed = record(strategy, phases, G_ema)
    files = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    results[("resume", stage)] = {
        "uninterrupted": uninterrupted,
        "resumed": resumed,
        "files": files,
        "shared_keys": sorted(shared),
    }


def D_weights(strategy: Strategy) -> list[torch.Tensor]:
    with strategy.gathered("D") as D:
        return [p.detach().cpu().clone() for p in D.parameters()]


for stage in (None, 0, 1, 3):  # the non-finite guard: a NaN loss on rank 1 only makes both ranks skip
    strategy, phases, G_ema = build(stage, "fp32")
    flags, weights = [], [D_weights(strategy)]
    for poison in (True, False):
        with strategy.autocast():
            loss = strategy.train_forward("D")(REAL[MINE]).mean()
        if poison and rank == 1:
            loss = loss * float("nan")
        strategy.backward("D", loss)
        flags.append(strategy.step("D", guard=True)["nonfinite"].item())
        weights.append(D_weights(strategy))
    unchanged = all(torch.equal(a, b) for a, b in zip(weights[0], weights[1]))
    moved = all(torch.isfinite(b).all() and not torch.equal(a, b) for a, b in zip(weights[1], weights[2]))
    digest = gather_object([str([w.sum().item() for w in weights[2]])])
    results[("guard", stage)] = {"nonfinite": flags, "unchanged": unchanged, "moved": moved, "digests": digest}

if device.type == "cpu":
    # fp16 loss scaling: torch 2.13 runs fp16 autocast kernels on CPU, so the dynamic loss scale (overflows
    # at 2**16, skipped steps, back-off) can be checked here. gandist refuses fp16 on CPU for users (it is
    # slow and GPUs are what it is for): the test lifts that policy.
    strategy_base.resolve_precision = lambda precision, device: precision
    for stage in (None, 0, 1, 2, 3):
        strategy, phases, G_ema = build(stage, "fp16")
        trace = {"skipped/G": [], "skipped/D": []}
        for _ in range(6):
            step(strategy, phases, G_ema)
            means = phases.stats.means(strategy.reduce_mean)
            for net in ("G", "D"):
                trace[f"skipped/{net}"].append(means[f"skipped_frac/{net}"])
        trace["scale"] = [strategy.scaler(net).get_scale() for net in ("G", "D")]
        results[("fp16_cpu", stage)] = {**record(strategy, phases, G_ema), **trace}

if rank == 0:
    torch.save(results, sys.argv[1])
strategy.close()
