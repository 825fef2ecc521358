"""How the two networks are held, run and stepped: one process, DDP or DeepSpeed ZeRO 0-3, one interface.

The training loop never touches DDP wrappers, engines, scalers or optimizers directly. It asks:

    strategy.train_forward("G")             the callable that trains G (DDP wrapper or DeepSpeed engine)
    strategy.frozen("D")                    D's raw module, requires_grad off, for the G phase
    strategy.autocast()                     forward passes at the run's precision
    strategy.backward("D", loss)            backward one micro-batch of the open optimizer step of D
    strategy.step("D")                      close it after the last micro-batch: clip, step, clear
    strategy.gathered("G")                  the module with full parameters (G_ema, sampling, digests)
    strategy.checkpoint_state()             full weights (+ optimizer states where not sharded) for state.pt
    strategy.save_engine_states(folder)     sharded states, every rank (DeepSpeed: ds_G/, ds_D/)
    strategy.load_state(folder, shared)     the reverse

Modules: launch.py resolves the config and the launcher's environment into a plan; base.py is the
Accelerator set-up and the single/DDP strategy; zero.py the DeepSpeed engines; zero_config.py their
configs; ema.py G_ema held as G is; sharded_state.py ZeRO-3 partitions in checkpoints; universal.py a ZeRO
checkpoint resumed at another world size. Models stay plain single-device modules; distribution is applied
here.
"""

from __future__ import annotations

import os

from gandist.config import StrategyConfig
from gandist.strategy.base import PRECISIONS, Strategy, make_accelerator, resolve_precision
from gandist.strategy.launch import StrategyPlan, check_batch, plan_strategy

__all__ = [
    "PRECISIONS",
    "Strategy",
    "StrategyPlan",
    "check_batch",
    "make_accelerator",
    "make_strategy",
    "plan_strategy",
    "resolve_precision",
]


def make_strategy(
    cfg: StrategyConfig,
    precision: str,
    global_batch: int,
    log_with: list[str] | None = None,
    logging_dir: str | None = None,
) -> Strategy:
    """Set up the process group and build the strategy the config and the launch ask for.

    precision: train.precision; global_batch: train.batch (images per optimizer step over all ranks);
    log_with, logging_dir: the trackers of accelerate's tracker API (reporting/trackers.py).
    """
    accelerator = make_accelerator(cfg, log_with, logging_dir)
    plan = plan_strategy(cfg, precision, accelerator.num_processes, os.environ)
    check_batch(global_batch, accelerator.num_processes, plan.gradient_accumulation)
    if plan.name == "deepspeed":
        from gandist.strategy.zero import ZeroStrategy  # imports deepspeed: only when asked for

        return ZeroStrategy(accelerator, plan, global_batch, cfg.timeout_s)
    return Strategy(accelerator, plan.precision, plan.gradient_accumulation, plan.grad_clip)
