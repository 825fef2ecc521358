"""What a ZeRO run holds right after restoring a checkpoint, at whatever world size it is launched with.

    python tests/dist/zero_state_after_load.py CHECKPOINT OUT                       # one process
    accelerate launch --config_file launch/cpu_2proc.yaml tests/dist/zero_state_after_load.py CHECKPOINT OUT

Builds the run's nets, optimizers and strategy from the run's config.yaml as training does, restores the
checkpoint (at another world size than the one that wrote it: through DeepSpeed's universal checkpoint),
and rank 0 saves, per net and parameter, the full fp32 master weight and Adam moments (DeepSpeed's
safe_get_full_* gather them), Adam's step counts, the buffers, and G_ema's full weights.
"""

import sys
from pathlib import Path

import torch
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

from gandist.config import load_config
from gandist.strategy import make_strategy
from gandist.training.run import _build_state

folder, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = load_config(folder.parent.parent / "config.yaml", [])
strategy = make_strategy(cfg.strategy, cfg.train.precision, cfg.train.batch)
state, _ = _build_state(cfg, strategy, torch.contiguous_format)
state.load(folder)

result: dict = {"world_size": strategy.world_size}
for name in ("G", "D"):
    module, engine = strategy.nets[name].module, strategy.engines[name]
    # ZeRO-1/2 link each parameter to its Adam moments at the first step; a restored run has not stepped yet
    getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", lambda: None)()
    for pname, p in module.named_parameters():
        result[f"{name}.{pname}.fp32"] = safe_get_full_fp32_param(p).clone()
        for key in ("exp_avg", "exp_avg_sq"):
            result[f"{name}.{pname}.{key}"] = safe_get_full_optimizer_state(p, key).clone()
    result.update({f"{name}.{k}": v.clone() for k, v in module.named_buffers()})
    base = engine.optimizer.optimizer  # the torch Adam under ZeRO's wrapper
    result[f"{name}.adam_steps"] = sorted({float(s["step"]) for s in base.state.values()})
for pname, p in strategy.full_parameters("G_ema"):
    result[f"G_ema.{pname}"] = p.clone()
if strategy.is_main:
    torch.save(result, out)
strategy.close()  # all ranks tear down together: a rank leaving while rank 0 saves aborted at exit (gloo)
