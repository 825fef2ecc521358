"""Phases as whole optimizer steps: gradient accumulation changes how a step is computed, not which steps happen."""

import pytest
import torch
from torch import nn

from gandist.config import StrategyConfig
from gandist.objectives.losses import get_losses
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator
from gandist.training.phases import Phases, micro_batches


class TinyG(nn.Module):
    """No batch statistics: an image depends on its own z only."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.LeakyReLU(0.2), nn.Linear(64, 16), nn.Tanh())

    def forward(self, z, c=None):
        return self.net(z).view(-1, 1, 4, 4)


class TinyD(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1))

    def forward(self, x, c=None):
        return self.net(x)


def _train(accumulation: int, steps: int = 4, r1_interval: int = 2):
    torch.manual_seed(0)
    G, D = TinyG(), TinyD()
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32", accumulation=accumulation)
    strategy.add("G", G, torch.optim.Adam(G.parameters(), lr=1e-2, betas=(0.0, 0.99)))
    strategy.add("D", D, torch.optim.Adam(D.parameters(), lr=1e-2, betas=(0.0, 0.99)))
    phases = Phases(strategy, *get_losses("nonsaturating"), TickStats(strategy.device), guard=True)
    data = torch.Generator().manual_seed(1)
    for step in range(steps):
        real = torch.rand(8, 1, 4, 4, generator=data) * 2 - 1
        z_d, z_g = torch.randn(8, 8, generator=data), torch.randn(8, 8, generator=data)
        assert phases.step(real, z_d, z_g)
        if step % r1_interval == 0:
            assert phases.r1_phase(real, None, gamma=1.0, interval=r1_interval)
    adam_steps = {name: int(next(iter(strategy.optimizer(name).state.values()))["step"]) for name in ("G", "D")}
    return G, D, adam_steps


def test_accumulation_with_lazy_r1_takes_the_same_optimizer_steps_and_reaches_the_same_weights():
    G1, D1, steps1 = _train(accumulation=1)
    G2, D2, steps2 = _train(accumulation=2)
    # 4 iterations: 4 D steps + 2 R1 steps of D, 4 G steps, whatever the accumulation
    assert steps1 == steps2 == {"G": 4, "D": 6}
    for a, b in zip(list(G1.parameters()) + list(D1.parameters()), list(G2.parameters()) + list(D2.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_micro_batches_split_every_tensor_alike():
    x, y = torch.arange(6), torch.arange(6) * 10
    parts = list(micro_batches(3, x, None, y))
    assert len(parts) == 3 and all(p[1] is None for p in parts)
    assert [p[0].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert [p[2].tolist() for p in parts] == [[0, 10], [20, 30], [40, 50]]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_skipped_step_adds_no_statistics(accumulation):
    torch.manual_seed(0)
    G, D = TinyG(), TinyD()
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32", accumulation=accumulation)
    strategy.add("G", G, torch.optim.SGD(G.parameters(), lr=0.1))
    strategy.add("D", D, torch.optim.SGD(D.parameters(), lr=0.1))
    d_loss, g_loss = get_losses("nonsaturating")
    nan_loss = lambda real, fake: d_loss(real, fake) * float("nan")  # noqa: E731
    phases = Phases(strategy, nan_loss, g_loss, TickStats(strategy.device), guard=True)
    before = [p.detach().clone() for p in D.parameters()]
    assert not phases.d_phase(torch.rand(4, 1, 4, 4), torch.randn(4, 8))
    assert all(torch.equal(a, b) for a, b in zip(before, D.parameters()))
    assert "loss/D" not in phases.stats.sums
