"""Density and coverage (Naeem et al. 2020) on point sets whose answer is known."""

import pytest
import torch

from gandist.metrics.coverage import density_coverage
from gandist.metrics.precision_recall import precision_recall


def _square(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_a_set_against_itself_is_covered_and_its_density_counts_each_ball(k):
    real = _square(1500, 0)
    density, coverage = density_coverage(real, real, k=k)
    assert coverage == 1.0
    # every ball holds its centre and k neighbours: (N + N k) / (k N), less the few k-th neighbours that
    # round-off in the distances puts just outside
    assert density == pytest.approx(1 + 1 / k, rel=0.01)


def test_a_collapsed_set_covers_little_however_many_copies():
    real = _square(2000, 0)
    collapsed = real[:1].repeat(2000, 1)
    density, coverage = density_coverage(real, collapsed, k=5)
    assert coverage < 0.01
    # recall gives the collapsed set nothing either, but precision calls it perfect: coverage is the diversity term
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.01
    assert density > 0  # the one point lies inside some real balls


def test_independent_samples_of_the_same_distribution():
    density, coverage = density_coverage(_square(3000, 0), _square(3000, 1), k=5)
    assert coverage > 0.93  # 1 - 2^-5 for two equal samples, less the edges
    assert 0.85 < density < 1.15  # about 1 for fakes distributed like the reals


def test_half_the_support_gives_half_the_coverage_at_full_density():
    real = _square(4000, 0)
    left = _square(4000, 1) * torch.tensor([0.5, 1.0])
    density, coverage = density_coverage(real, left, k=5)
    assert 0.45 < coverage < 0.58
    assert 0.85 < density < 1.3  # every fake is among reals as dense as anywhere


def test_outliers_do_not_cover_the_data():
    # recall builds balls around the fakes: one outlier's ball (radius: its distance to the others) swallows
    # half the data; coverage does not
    real = _square(2000, 0)
    fake = torch.cat([torch.tensor([[0.5, 0.5]]).repeat(1999, 1), torch.tensor([[0.5, 2.0]])])
    _, recall = precision_recall(real, fake, k=3)
    density, coverage = density_coverage(real, fake, k=5)
    assert recall > 0.4 and coverage < 0.01


def test_disjoint_sets_and_bad_shapes():
    real = _square(500, 0)
    assert density_coverage(real, real + 10.0, k=5) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same width"):
        density_coverage(real, torch.zeros(10, 3))
    with pytest.raises(ValueError, match="k=5"):
        density_coverage(real[:5], real)
