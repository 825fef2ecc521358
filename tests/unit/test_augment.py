"""DiffAugment and adaptive augmentation: what each op does, p, its steering and its state."""

import pytest
import torch

from gandist.objectives.augment import ADA_OPS, AugmentPipe, ada_augment, diff_augment


def _images(n=8, c=1, size=16, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_diffaugment_translation_moves_content_and_fills_zeros():
    torch.manual_seed(0)
    x = torch.ones(64, 1, 32, 32)
    y = diff_augment(x, ["translation"])
    zeros = (y == 0).flatten(1).sum(1)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    assert zeros.max() <= 32 * 4 * 2 + 4 * 4 * 4  # at most 4 px (1/8) each way
    assert (zeros > 0).float().mean() > 0.5  # most images moved


def test_diffaugment_cutout_zeroes_at_most_a_quarter():
    torch.manual_seed(0)
    y = diff_augment(torch.ones(64, 1, 32, 32), ["cutout"])
    frac = (y == 0).flatten(1).float().mean(1)
    assert (frac > 0).all() and (frac <= 0.25).all() and (frac == 0.25).any()


def test_diffaugment_color_changes_brightness_and_is_differentiable():
    torch.manual_seed(0)
    x = _images(32).requires_grad_(True)
    y = diff_augment(x, ["color", "translation", "cutout"])
    assert y.shape == x.shape
    assert (y.mean((1, 2, 3)) - x.mean((1, 2, 3))).abs().mean() > 0.05
    y.square().sum().backward()
    assert x.grad.abs().sum() > 0


def test_unknown_ops_are_refused():
    with pytest.raises(ValueError, match="unknown DiffAugment op"):
        AugmentPipe(diffaugment=["colour"])
    with pytest.raises(ValueError, match="unknown ADA op"):
        AugmentPipe(ada_ops=["flip"])


@pytest.mark.parametrize("op", ADA_OPS)
def test_ada_ops_at_p0_are_identity_and_at_p1_change_images(op):
    torch.manual_seed(0)
    x = _images(16, c=3)
    torch.testing.assert_close(ada_augment(x, [op], torch.tensor(0.0)), x, atol=1e-5, rtol=0)
    y = ada_augment(x, [op], torch.tensor(1.0))
    assert y.shape == x.shape
    changed = ((y - x).abs().flatten(1).max(1).values > 1e-3).float().mean()
    assert changed > 0.5, op


def test_ada_xflip_and_rotate90_are_exact():
    torch.manual_seed(0)
    x = _images(4)
    torch.testing.assert_close(ada_augment(x, ["xflip"], torch.tensor(1.0)), x.flip(3))
    y = ada_augment(x, ["rotate90"], torch.tensor(1.0))
    for i in range(4):  # each image is one of its four rotations
        assert any(torch.equal(y[i], x[i].rot90(k, dims=(1, 2))) for k in range(4))


def test_ada_applies_each_op_with_probability_p():
    torch.manual_seed(0)
    x = _images(4000, size=8)
    y = ada_augment(x, ["xflip"], torch.tensor(0.3))
    flipped = (y != x).flatten(1).any(1).float().mean().item()
    assert flipped == pytest.approx(0.3, abs=0.03)


def test_ada_p_follows_the_sign_of_D_real():
    pipe = AugmentPipe(ada_ops=["xflip"], p=0.2, target=0.6, speed_kimg=1.0)
    pipe.observe(torch.tensor([1.0, 1.0, 1.0, -1.0]))  # r_t = 0.5 < 0.6: D not overfitting, p goes down
    rt = pipe.adjust(nimg_since=100)
    assert rt.item() == pytest.approx(0.5) and pipe.p.item() == pytest.approx(0.1)
    pipe.observe(torch.ones(8))  # r_t = 1 > 0.6: p goes up by 100 / 1000
    pipe.adjust(nimg_since=100)
    pipe.observe(torch.ones(8))
    pipe.adjust(nimg_since=100)
    assert pipe.p.item() == pytest.approx(0.3)
    for _ in range(20):
        pipe.observe(-torch.ones(8))
        pipe.adjust(nimg_since=100)
    assert pipe.p.item() == 0.0  # clamped


def test_ada_statistics_are_reduced_before_steering():
    pipe = AugmentPipe(ada_ops=["xflip"], p=0.5, target=0.6, speed_kimg=1.0)
    pipe.observe(-torch.ones(4))  # locally r_t = -1 ...
    seen = []

    def other_rank_all_positive(t):  # ... but the mean over ranks says r_t = 1
        seen.append(t.clone())
        return torch.tensor([4.0, 4.0])

    pipe.adjust(100, reduce_mean=other_rank_all_positive)
    assert seen[0].tolist() == [-4.0, 4.0] and pipe.p.item() == pytest.approx(0.6)
    assert pipe.signs.abs().sum() == 0


def test_fixed_p_without_target_and_state_round_trip():
    pipe = AugmentPipe(ada_ops=["xflip"], p=0.25, target=0.0)
    pipe.observe(torch.ones(4))
    pipe.adjust(1000)
    assert pipe.p.item() == 0.25 and not pipe.adaptive
    steered = AugmentPipe(ada_ops=["xflip"], p=0.0, target=0.6, speed_kimg=1.0)
    steered.observe(torch.ones(2))
    steered.adjust(500)
    restored = AugmentPipe(ada_ops=["xflip"], target=0.6)
    restored.load_state_dict(steered.state_dict())
    assert restored.p.item() == pytest.approx(0.5)


def test_disabled_pipe_is_identity():
    pipe = AugmentPipe()
    x = _images()
    assert not pipe.enabled and pipe(x) is x
