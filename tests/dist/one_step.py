"""One D step and one G step on a fixed global batch, run as 1 or N processes; saves the result.

    python tests/dist/one_step.py OUT.pt [LOSS]                              # 1 process
    accelerate launch --config_file launch/cpu_2proc.yaml tests/dist/one_step.py OUT.pt [LOSS]   # 2

LOSS: a train.loss name (nonsaturating); a relativistic (paired) loss's G step also takes the real batch.

The global batch is two identical halves (images and noise), so each rank of a 2-process run sees
exactly the batch statistics of the 1-process run: BatchNorm then cannot tell the runs apart
and any difference comes from the distribution itself (gradient averaging, noise slicing).
"""

import sys

import torch

from gandist.config import load_config
from gandist.models import build_nets
from gandist.objectives.losses import PAIRED, get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases

cfg = load_config(None, ["model.g_width=8", "model.d_width=8", "model.z_dim=16", "train.precision=fp32"])
strategy = Strategy(make_accelerator(cfg.strategy), "fp32")
G, D = build_nets(cfg.model, cfg.train.seed)
strategy.add("G", G, make_optimizer(G.parameters(), cfg.G_opt))
strategy.add("D", D, make_optimizer(D.parameters(), cfg.D_opt))
loss = sys.argv[2] if len(sys.argv) > 2 else "nonsaturating"
phases = Phases(strategy, *get_losses(loss), TickStats(strategy.device), paired=loss in PAIRED)

half = 8
gen = torch.Generator().manual_seed(123)
real = torch.rand(half, 1, 32, 32, generator=gen) * 2 - 1
z_d, z_g = torch.randn(half, 16, generator=gen), torch.randn(half, 16, generator=gen)
world, rank = strategy.world_size, strategy.rank
full = lambda x: torch.cat([x, x])  # the global batch: two identical halves
per_rank = 2 * half // world
mine = slice(rank * per_rank, (rank + 1) * per_rank)
phases.d_phase(full(real)[mine], full(z_d)[mine])
phases.g_phase(full(z_g)[mine], None, *((full(real)[mine], None) if phases.paired else ()))
losses = phases.stats.means(strategy.reduce_mean)
if strategy.is_main:
    torch.save(
        {
            "G": {k: v.clone() for k, v in G.state_dict().items()},
            "D": {k: v.clone() for k, v in D.state_dict().items()},
            "exp_avg_G": [strategy.optimizer("G").state[p]["exp_avg"].clone() for p in G.parameters()],
            "exp_avg_D": [strategy.optimizer("D").state[p]["exp_avg"].clone() for p in D.parameters()],
            "losses": losses,
            "world": world,
        },
        sys.argv[1],
    )
strategy.close()
# close() must have dropped the DDP wrappers before destroying the process group (freed later, at
# interpreter shutdown, they aborted the process now and then: "terminate called without an active exception")
released = all(net.wrapped is net.module for net in strategy.nets.values()) and not strategy.accelerator._models
if strategy.is_main:
    torch.save({**torch.load(sys.argv[1], weights_only=False), "released": released}, sys.argv[1])
