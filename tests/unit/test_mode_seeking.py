"""G's mode-seeking term (train.mode_seeking_weight, train.mode_seeking): its value, the same-class pairs it is
computed on, the order D sees them in, its keys."""

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.models.layers import minibatch_stddev
from gandist.objectives.losses import mode_seeking, pairs_apart
from tests.unit.conditional_nets import make_phases


def test_mode_seeking_by_hand():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [1.0, 3.0]])  # pairs (0, 2) and (1, 3): |dz| mean 1
    x = torch.zeros(4, 1, 2, 2)
    x[2] = 0.5  # pair (0, 2) differs by 0.5 everywhere, pair (1, 3) not at all: |dx| mean 0.25
    assert mode_seeking(x, z).item() == pytest.approx(1 / (0.25 / 1 + 1e-5))
    # pair by pair: pair (0, 2) has ratio 0.5, the collapsed pair (1, 3) ratio 0, and it dominates the mean
    assert mode_seeking(x, z, per_pair=True).item() == pytest.approx((1 / (0.5 + 1e-5) + 1 / 1e-5) / 2)


def test_pairs_push_the_collapsed_pair_hardest():
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [1.0, 3.0]])
    x = torch.zeros(4, 1, 2, 2)
    x[2], x[3] = 0.5, 0.05  # pair (0, 2) far apart, pair (1, 3) nearly collapsed
    for per_pair in (False, True):
        x_ = x.clone().requires_grad_(True)
        mode_seeking(x_, z, per_pair=per_pair).backward()
        pushed = x_.grad[2:].abs().flatten(1).mean(1)  # how hard each pair's second image is pushed
        if per_pair:
            assert pushed[1] > 50 * pushed[0]
        else:
            assert pushed[1] == pytest.approx(pushed[0].item())


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


def std_group(n: int, group_size: int, position: int) -> set[int]:
    """The positions D's minibatch std layer takes one std over together with `position`, found by running it."""
    x = torch.zeros(n, 1, 1, 1)
    x[position] = 1.0
    return set((minibatch_stddev(x, group_size)[:, 1].flatten() > 0.1).nonzero().flatten().tolist())


@pytest.mark.parametrize("n, group_size", [(8, 4), (32, 4), (32, 8), (12, 4), (9, 2), (16, 2), (4, 2)])
def test_pairs_apart_puts_no_pair_in_one_minibatch_std_group(n, group_size):
    order = pairs_apart(n)
    assert sorted(order.tolist()) == list(range(n))  # a permutation of the batch
    position = order.argsort()  # where each sample of the batch is shown to D
    half = n // 2
    for i in range(half):
        assert position[i + half].item() not in std_group(n, group_size, position[i].item())
    # in the batch's own order, every pair shares a group (the strided groups of a batch of 2 * half)
    if n % 2 == 0:
        assert all(i + half in std_group(n, group_size, i) for i in range(half))


@pytest.mark.parametrize("accumulation", [1, 2])
def test_D_sees_the_pairs_apart_with_their_classes(accumulation):
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    for weight in (0.0, 1.0):
        phases = make_phases(accumulation=accumulation, mode_seeking_weight=weight, class_weight_g=0.5)
        made, shown = [], []  # G's (images, classes asked for); D's (images, classes) in G's phase
        G, D = phases.strategy.module("G"), phases.strategy.module("D")
        G.register_forward_hook(lambda _m, args, out, made=made: made.append((out.detach(), args[1])))
        D.register_forward_pre_hook(lambda _m, args, shown=shown: shown.append(args))
        assert phases.g_phase(z, c)
        assert len(made) == len(shown) == accumulation
        for (fake, asked), (images, labels) in zip(made, shown):
            order = pairs_apart(len(asked)) if weight > 0 else torch.arange(len(asked))
            assert torch.equal(images.detach(), fake[order]) and torch.equal(labels, asked[order])


def test_mode_seeking_weight_key():
    with pytest.raises(ConfigError, match=r"train\.mode_seeking_weight"):
        load_config(None, ["train.mode_seeking_weight=-1"])
    assert load_config(None, ["train.mode_seeking_weight=0.2"]).train.mode_seeking_weight == 0.2


def test_mode_seeking_key():
    assert load_config(None, []).train.mode_seeking == "batch"
    assert load_config(None, ["train.mode_seeking=pairs"]).train.mode_seeking == "pairs"
    with pytest.raises(ConfigError, match=r"train\.mode_seeking"):
        load_config(None, ["train.mode_seeking=pair"])


def test_G_step_takes_the_form_of_the_term_it_is_given():
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(8, 8, generator=g), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    for form in ("batch", "pairs"):
        phases = make_phases(mode_seeking_weight=1.0, mode_seeking=form)
        fakes, G = [], phases.strategy.module("G")
        G.register_forward_hook(lambda _module, _args, out, fakes=fakes: fakes.append(out.detach()))
        assert phases.g_phase(z, c)
        reported = float(phases.stats.means(lambda t: t)["loss/mode_seeking"])
        assert reported == pytest.approx(mode_seeking(fakes[0], z, per_pair=form == "pairs").item(), rel=1e-5)
        assert reported != pytest.approx(mode_seeking(fakes[0], z, per_pair=form != "pairs").item(), rel=1e-3)
