import pytest
import torch

from gandist.training.ema import ema_beta, make_ema, update_ema


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


def test_refresh_batchnorm_stats_matches_the_averaged_weights():
    from gandist.training.ema import refresh_batchnorm_stats

    class TinyG(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 4)
            self.bn = torch.nn.BatchNorm1d(4)

        def forward(self, z, c=None):
            return self.bn(self.fc(z))

    G_ema = make_ema(TinyG())
    with torch.no_grad():
        G_ema.bn.running_mean.fill_(100.0)  # statistics of some other weights
        G_ema.fc.bias.fill_(2.0)
    weight = G_ema.fc.weight.clone()
    assert refresh_batchnorm_stats(G_ema, 3, 0, torch.device("cpu"), seed=0, batches=50, batch=64)
    # the pre-BN activations have mean fc.bias (z ~ N(0, 1)): the refreshed mean is near 2, not 100
    torch.testing.assert_close(G_ema.bn.running_mean, torch.full((4,), 2.0), atol=0.15, rtol=0)
    assert torch.equal(G_ema.fc.weight, weight) and not G_ema.training and G_ema.bn.momentum == 0.1
    before = G_ema.bn.running_var.clone()
    refresh_batchnorm_stats(G_ema, 3, 0, torch.device("cpu"), seed=0, batches=50, batch=64)
    assert torch.equal(G_ema.bn.running_var, before)  # same seed, same statistics (every rank agrees)
    assert not refresh_batchnorm_stats(make_ema(torch.nn.Linear(3, 3)), 3, 0, torch.device("cpu"), seed=0)
