import math

import pytest
import torch

from gandist.objectives.losses import get_losses, hinge_d, hinge_g, nonsaturating_d, nonsaturating_g


def test_nonsaturating_by_hand():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = lambda v: 1 / (1 + math.exp(-v))
    want_d = (-math.log(sig(2.0)) - math.log(sig(-1.0))) / 2 + (-math.log(1 - sig(0.5)) - math.log(1 - sig(-3.0))) / 2
    want_g = (-math.log(sig(0.5)) - math.log(sig(-3.0))) / 2
    assert nonsaturating_d(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    assert nonsaturating_g(fake).item() == pytest.approx(want_g, rel=1e-6)


def test_nonsaturating_at_zero_logits_is_log2():
    zeros = torch.zeros(4)
    assert nonsaturating_d(zeros, zeros).item() == pytest.approx(2 * math.log(2))
    assert nonsaturating_g(zeros).item() == pytest.approx(math.log(2))


def test_nonsaturating_is_stable_for_large_logits():
    big = torch.tensor([100.0])
    assert torch.isfinite(nonsaturating_d(-big, big)) and nonsaturating_d(-big, big).item() == pytest.approx(200.0)


def test_hinge_by_hand():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.25])
    assert hinge_d(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1.25) / 2)
    assert hinge_g(fake).item() == pytest.approx(-(-2.0 + 0.25) / 2)


def test_registry():
    assert get_losses("hinge") == (hinge_d, hinge_g)
    with pytest.raises(ValueError, match="unknown loss"):
        get_losses("nope")


def test_least_squares_by_hand():
    from gandist.objectives.losses import least_squares_d, least_squares_g

    real, fake = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert least_squares_d(real, fake).item() == pytest.approx(0.5 * (0 + 1) / 2 + 0.5 * (0 + 4) / 2)
    assert least_squares_g(fake).item() == pytest.approx(0.5 * (1 + 1) / 2)


def test_wgan_by_hand():
    from gandist.objectives.losses import wgan_d, wgan_g

    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 0.0])
    assert wgan_d(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert wgan_g(fake).item() == pytest.approx(0.5)
    assert set(get_losses.__globals__["LOSSES"]) == {"nonsaturating", "hinge", "least_squares", "wgan", "relativistic"}
