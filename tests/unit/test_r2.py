"""R2 (train.r2_gamma): R1's penalty taken on G's samples, in the same lazy D step as R1 (R3GAN regularises D with
both). The step's gradient by hand, with and without R1, under accumulation; the classes of the samples; the key."""

import pytest
import torch

from gandist.config import ConfigError, StrategyConfig, load_config
from gandist.objectives.losses import PAIRED, get_losses
from gandist.objectives.regularizers import r1_penalty
from gandist.reporting.stats import TickStats
from gandist.strategy import Strategy, make_accelerator
from gandist.training.phases import Phases
from tests.unit.conditional_nets import CLASSES, RES, nets
from tests.unit.test_phases import TinyD, TinyG

INTERVAL = 4


def _tiny_phases(accumulation: int) -> Phases:
    torch.manual_seed(0)
    G, D = TinyG(), TinyD()
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32", accumulation=accumulation)
    strategy.add("G", G, torch.optim.SGD(G.parameters(), lr=1.0))  # lr 1: a step moves by minus the gradient
    strategy.add("D", D, torch.optim.SGD(D.parameters(), lr=1.0))
    return Phases(strategy, *get_losses("nonsaturating"), TickStats(strategy.device))


def _by_hand(D, real, fake, r1_gamma, r2_gamma, c_real=None, c_fake=None):
    """The gradient of (r1_gamma/2 E|grad D(real)|^2 + r2_gamma/2 E|grad D(fake)|^2) * INTERVAL on D's parameters."""
    loss = 0.0  # only the terms in use run D (a spectral-norm D moves its power iteration on each forward)
    for gamma, images, c in ((r1_gamma, real, c_real), (r2_gamma, fake, c_fake)):
        if gamma > 0:
            loss = loss + gamma / 2 * r1_penalty(D, images, c)[0].mean()
    params = list(D.parameters())  # the last bias does not move D's gradient in x: no gradient
    grads = torch.autograd.grad(loss * INTERVAL, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize(("r1_gamma", "r2_gamma"), [(0.0, 3.0), (1.0, 3.0), (1.0, 0.0)])
def test_the_lazy_step_follows_R1_on_reals_plus_R2_on_fakes(accumulation, r1_gamma, r2_gamma):
    phases = _tiny_phases(accumulation)
    G, D = phases.strategy.module("G"), phases.strategy.module("D")
    g = torch.Generator().manual_seed(1)
    real, z = torch.rand(8, 1, 4, 4, generator=g) * 2 - 1, torch.randn(8, 8, generator=g)
    with torch.no_grad():
        fake = G(z)
    expected = _by_hand(D, real, fake, r1_gamma, r2_gamma)
    d_before = [p.detach().clone() for p in D.parameters()]
    g_before = [p.detach().clone() for p in G.parameters()]
    assert phases.r1_phase(real, None, r1_gamma, INTERVAL, z=z, r2_gamma=r2_gamma)
    for after, before, grad in zip(D.parameters(), d_before, expected):
        torch.testing.assert_close(before - after.detach(), grad, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(G.parameters(), g_before))  # G is not trained here
    stats = phases.stats.means(lambda t: t)
    assert ("loss/r2" in stats) == (r2_gamma > 0) and ("loss/r1" in stats) == (r1_gamma > 0)


def test_R2_without_samples_is_refused():
    with pytest.raises(ValueError, match="R2"):
        _tiny_phases(1).r1_phase(torch.zeros(8, 1, 4, 4), None, 0.0, INTERVAL, r2_gamma=1.0)


def _conditional_phases(loss: str) -> Phases:
    """The tiny conditional resnet pair under SGD at lr 1 (a step moves D by minus its gradient)."""
    G, D = nets()
    strategy = Strategy(make_accelerator(StrategyConfig()), "fp32")
    strategy.add("G", G, torch.optim.SGD(G.parameters(), lr=1.0))
    strategy.add("D", D, torch.optim.SGD(D.parameters(), lr=1.0))
    return Phases(strategy, *get_losses(loss), TickStats(strategy.device), paired=loss in PAIRED)


@pytest.mark.parametrize(("loss", "paired"), [("hinge", False), ("relativistic", True)])
def test_R2_takes_fakes_of_the_classes_D_is_shown(loss, paired):
    """The D phase's fakes: of the drawn classes, or under a paired loss of the real batch's classes."""
    g = torch.Generator().manual_seed(2)
    real = torch.rand(8, 1, RES, RES, generator=g) * 2 - 1
    c_real, c_fake = torch.arange(8) % CLASSES, (torch.arange(8) + 1) % CLASSES
    z = torch.randn(8, 8, generator=g)
    steps = {}
    for name, classes in (("c_real", c_real), ("c_fake", c_fake)):  # the step by hand with either set of classes
        phases = _conditional_phases(loss)
        G, D = phases.strategy.module("G"), phases.strategy.module("D")
        with torch.no_grad():
            fake = G(z, classes)
        steps[name] = _by_hand(D, real, fake, 0.0, 2.0, c_real, classes)
    phases = _conditional_phases(loss)
    D = phases.strategy.module("D")
    before = [p.detach().clone() for p in D.parameters()]
    assert phases.r1_phase(real, c_real, 0.0, INTERVAL, z=z, c_fake=c_fake, r2_gamma=2.0)
    moved = [b - a.detach() for a, b in zip(D.parameters(), before)]
    match = {k: all(torch.allclose(m, s, rtol=1e-4, atol=1e-6) for m, s in zip(moved, v)) for k, v in steps.items()}
    assert match == {"c_real": paired, "c_fake": not paired}


def test_r2_gamma_key():
    cfg = load_config(None, ["train.r2_gamma=0.05"])
    assert cfg.train.r2_gamma == 0.05 and cfg.train.lazy_regularized
    assert not load_config(None, []).train.lazy_regularized
    assert load_config(None, ["train.r1_gamma=1"]).train.lazy_regularized
    with pytest.raises(ConfigError, match=r"train\.r2_gamma"):
        load_config(None, ["train.r2_gamma=-1"])
