import pytest
import torch

from gandist.ema import ema_beta, make_ema, update_ema


def test_half_life_in_images_does_not_depend_on_batch():
    # after half_life images, the old weights keep exactly half their weight, whatever the batch
    for batch in (16, 64, 256):
        steps = 10_000 // batch
        assert ema_beta(batch, 10**9, ema_kimg=batch * steps / 1000, rampup=0) ** steps == pytest.approx(0.5)


def test_rampup_limits_half_life_early():
    assert ema_beta(64, 0, 10.0, 0.05) == 0.0
    assert ema_beta(64, 1000, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 50))
    assert ema_beta(64, 10**9, 10.0, 0.05) == pytest.approx(0.5 ** (64 / 10_000))


def test_update_moves_towards_G_and_copies_buffers():
    G = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    G_ema = make_ema(G)
    assert not any(p.requires_grad for p in G_ema.parameters())
    before = G_ema[0].weight.clone()
    with torch.no_grad():
        G[0].weight.add_(1.0)
        G[1].running_mean.fill_(3.0)
    update_ema(G_ema, G, beta=0.75)
    torch.testing.assert_close(G_ema[0].weight, before + 0.25)
    torch.testing.assert_close(G_ema[1].running_mean, torch.full((2,), 3.0))
    update_ema(G_ema, G, beta=0.0)
    torch.testing.assert_close(G_ema[0].weight, G[0].weight)
