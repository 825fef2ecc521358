"""G's mode-seeking term (train.mode_seeking_weight): its value, the same-class pairs it is computed on, its key."""

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.objectives.losses import mode_seeking
from tests.unit.conditional_nets import make_phases


def test_mode_seeking_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [1.0, 3.0]])  # pairs (0, 2) and (1, 3): |dz| mean 1
    x = torch.zeros(4, 1, 2, 2)
    x[2] = 0.5  # pair (0, 2) differs by 0.5 everywhere, pair (1, 3) not at all: |dx| mean 0.25
    assert mode_seeking(x, z).item() == pytest.approx(1 / (0.25 / 1 + 1e-5))


def test_a_collapsed_batch_costs_most():
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    collapsed = torch.zeros(8, 1, 4, 4)
    varied = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    assert mode_seeking(collapsed, z).item() == pytest.approx(1e5)
    assert mode_seeking(varied, z).item() < 10
    # an odd batch leaves its last sample unpaired
    assert mode_seeking(torch.cat([varied, varied[:1]]), torch.cat([z, z[:1]])) == mode_seeking(varied, z)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_G_step_pairs_samples_of_one_class_and_reports_the_term(accumulation):
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(12, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 2, 2, 1, 0, 0, 1])
    steps = {}
    for weight in (0.0, 1.0):
        phases = make_phases(accumulation=accumulation, mode_seeking_weight=weight)
        G = phases.strategy.module("G")
        seen = []
        G.register_forward_pre_hook(lambda _module, args, seen=seen: seen.append(args[1].clone()))
        before = [p.detach().clone() for p in G.parameters()]
        assert phases.g_phase(z, c)
        steps[weight] = [p.detach() - b for p, b in zip(G.parameters(), before)]
        assert ("loss/mode_seeking" in phases.stats.means(lambda t: t)) == (weight > 0)
        assert len(seen) == accumulation
        if weight == 0:
            assert torch.equal(torch.cat(seen), c)
        for labels, asked in zip(seen, c.chunk(accumulation)):
            # with the term, each micro-batch's second half asks for its first half's classes
            half = len(labels) // 2
            assert torch.equal(labels[:half], asked[:half])
            assert torch.equal(labels[half:], asked[:half] if weight > 0 else asked[half:])
    assert any(not torch.allclose(a, b) for a, b in zip(steps[0.0], steps[1.0]))


def test_mode_seeking_weight_key():
    with pytest.raises(ConfigError, match=r"train\.mode_seeking_weight"):
        load_config(None, ["train.mode_seeking_weight=-1"])
    assert load_config(None, ["train.mode_seeking_weight=0.2"]).train.mode_seeking_weight == 0.2
