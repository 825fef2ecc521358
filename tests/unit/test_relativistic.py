"""The relativistic pairing loss (train.loss=relativistic): its value, the reals G's phase pairs its fakes with,
the classes of the pairs, ADA's signal under it, its key."""

import math

import pytest
import torch

from gandist.config import ConfigError, load_config
from gandist.objectives.augment import AugmentPipe
from gandist.objectives.losses import get_losses, relativistic_d, relativistic_g
from tests.unit.conditional_nets import CLASSES, RES, make_phases


def test_relativistic_by_hand():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert relativistic_d(real, fake).item() == pytest.approx((softplus(0.5 - 2.0) + softplus(-3.0 + 1.0)) / 2)
    assert relativistic_g(fake, real).item() == pytest.approx((softplus(2.0 - 0.5) + softplus(-1.0 + 3.0)) / 2)
    assert get_losses("relativistic") == (relativistic_d, relativistic_g)


def test_only_the_difference_of_each_pair_counts():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(6, generator=g), torch.randn(6, generator=g)
    for shift in (-5.0, 3.0):  # any constant added to both: the same loss (the non-saturating loss moves)
        assert relativistic_d(real + shift, fake + shift).item() == pytest.approx(relativistic_d(real, fake).item())
        assert relativistic_g(fake + shift, real + shift).item() == pytest.approx(relativistic_g(fake, real).item())
    # pairs, not batch means: swapping two reals changes the loss
    assert relativistic_d(real[[1, 0, 2, 3, 4, 5]], fake).item() != pytest.approx(relativistic_d(real, fake).item())


def batch(seed: int, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, RES, RES, generator=g) * 2 - 1, torch.randint(0, CLASSES, (n,), generator=g)


def test_G_phase_is_pulled_by_the_reals_it_is_paired_with():
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    steps = []
    for real_seed in (2, 3):
        real, c = batch(real_seed)
        phases = make_phases(loss="relativistic")
        G = phases.strategy.module("G")
        before = [p.detach().clone() for p in G.parameters()]
        assert phases.g_phase(z, c, real, c)
        steps.append([p.detach() - b for p, b in zip(G.parameters(), before)])
        assert "loss/G" in phases.stats.means(lambda t: t)
    assert any(not torch.allclose(a, b) for a, b in zip(*steps))  # other reals, another step of G
    with pytest.raises(ValueError, match="relativistic"):
        make_phases(loss="relativistic").g_phase(z, batch(2)[1])  # no reals: refused, not silently unpaired


@pytest.mark.parametrize("mode_seeking_weight", [0.0, 1.0])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_every_fake_is_paired_with_a_real_of_its_class(mode_seeking_weight, accumulation):
    real, c_real = batch(4, 12)
    noise = torch.Generator().manual_seed(5)
    z_d, z_g = torch.randn(12, 8, generator=noise), torch.randn(12, 8, generator=noise)
    c_d, c_g = (torch.randint(0, CLASSES, (12,), generator=noise) for _ in range(2))
    phases = make_phases(loss="relativistic", accumulation=accumulation, mode_seeking_weight=mode_seeking_weight)
    asked, d_calls, pairs = [], [], []  # G's classes; D's (classes, logits); the G loss's (fake, real) logits
    G, D = phases.strategy.module("G"), phases.strategy.module("D")
    G.register_forward_pre_hook(lambda _m, args: asked.append(args[1].clone()))
    D.register_forward_hook(lambda _m, args, out: d_calls.append((args[1].clone(), out.detach().flatten())))
    d_loss, g_loss = phases.d_loss, phases.g_loss
    phases.d_loss = lambda r, f: pairs.append(("D", f.detach().flatten(), r.detach().flatten())) or d_loss(r, f)
    phases.g_loss = lambda f, r: pairs.append(("G", f.detach().flatten(), r.detach().flatten())) or g_loss(f, r)
    assert phases.step(real, z_d, z_g, c_real, c_d, c_g)
    # the fakes of both phases are asked for the real batch's classes, not the drawn c_d, c_g (with the
    # mode-seeking term, G's second half repeats its first half's)
    micro = c_real.chunk(accumulation)
    half = [len(m) // 2 for m in micro]
    g_want = [torch.cat([m[:h], m[:h], m[2 * h :]]) if mode_seeking_weight else m for m, h in zip(micro, half)]
    assert len(asked) == 2 * accumulation
    assert all(torch.equal(a, w) for a, w in zip(asked, [*micro, *g_want]))
    # every pair in either loss holds the logits of a fake and of a real of the same class
    fake_calls = [next(cl for cl, lg in d_calls if torch.equal(lg, fake)) for _, fake, _ in pairs]
    reals = {
        (k, v)
        for cl, lg in d_calls
        if not any(torch.equal(lg, fake) for _, fake, _ in pairs)
        for k, v in zip(cl.tolist(), lg.tolist())
    }
    assert [phase for phase, _, _ in pairs] == ["D"] * accumulation + ["G"] * accumulation
    for (phase, fake, partner), fake_classes in zip(pairs, fake_calls):
        assert fake.shape == partner.shape
        assert all((k, v) in reals for k, v in zip(fake_classes.tolist(), partner.tolist())), phase


def test_relativistic_keys():
    assert load_config(None, ["train.loss=relativistic"]).train.loss == "relativistic"
    with pytest.raises(ConfigError, match=r"train\.loss"):
        load_config(None, ["train.loss=relativistic_average"])


def test_ADA_under_a_paired_loss_counts_the_pairs_D_ranks_right():
    # sign(D(real)) means nothing when only differences of D's logits do: ADA's r_t becomes the mean of
    # sign(D(real_i) - D(fake_i)), which reaches 1 as D learns to tell every training real from its fake
    real, c = batch(6, 8)
    z = torch.randn(8, 8, generator=torch.Generator().manual_seed(7))
    for loss in ("hinge", "relativistic"):
        phases = make_phases(loss=loss)
        phases.augment = AugmentPipe(ada_ops=["xflip"], p=0.0, target=0.6)
        seen = []
        d_loss = phases.d_loss
        phases.d_loss = lambda r, f, seen=seen, d_loss=d_loss: seen.append((r.detach(), f.detach())) or d_loss(r, f)
        assert phases.d_phase(real, z, c, c)
        (r, f), signs = seen[0], phases.augment.signs
        want = (r - f).sign().sum() if loss == "relativistic" else r.sign().sum()
        assert signs[1].item() == 8 and signs[0].item() == pytest.approx(want.item())
