"""A tiny class-conditional resnet G and D, and the Phases that train them: shared by the G/D loss-term tests."""

import torch

from gandist.config import OptimizerConfig, StrategyConfig
from gandist.models import build_models
from gandist.objectives.losses import PAIRED, get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator
from gandist.training.optim import make_optimizer
from gandist.training.phases import Phases

CLASSES = 3
RES = 8  # one residual block each: fast enough for unit tests


def nets(seed: int = 0, d_mbstd: int = 0):
    torch.manual_seed(seed)
    return build_models("resnet", RES, 1, z_dim=8, g_width=4, d_width=4, num_classes=CLASSES, d_mbstd=d_mbstd)


def make_phases(lr: float = 2e-3, accumulation: int = 1, loss: str = "hinge", **weights: float) -> Phases:
    """Phases of `loss` on nets() with Adam at `lr`; `weights`: Phases' loss-term weights (class_weight_d, ...)."""
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32", accumulation=accumulation)
    G, D = nets()
    strategy.add("G", G, make_optimizer(G.parameters(), OptimizerConfig(lr=lr, betas=(0.0, 0.99)), "cpu"))
    strategy.add("D", D, make_optimizer(D.parameters(), OptimizerConfig(lr=lr, betas=(0.0, 0.99)), "cpu"))
    return Phases(strategy, *get_losses(loss), TickStats(strategy.device), paired=loss in PAIRED, **weights)
