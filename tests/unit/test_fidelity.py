"""Class fidelity and per-class recall on toy classes whose answers are known."""

import math

import pytest
import torch
from torch import nn

from gandist.metrics.fidelity import (
    ClassFidelity,
    class_balanced_samples,
    class_fidelity,
    generator_fidelity,
    per_class_accuracy,
    per_class_recall,
)

CLASSES = 10
# class c is an 8x8 image of grey level LEVELS[c] plus noise; class 6 is noisy enough to be confused with its
# neighbours about half the time (as shirts are with T-shirts), the others are recognised almost always
LEVELS = torch.linspace(-0.9, 0.9, CLASSES)
NOISE = torch.full((CLASSES,), 0.15).index_fill(0, torch.tensor([6]), 1.2)


def toy_images(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(len(labels), 1, 8, 8, generator=generator) * NOISE[labels].view(-1, 1, 1, 1)
    return (LEVELS[labels].view(-1, 1, 1, 1) + noise).clamp(-1, 1)


class NearestLevel(nn.Module):
    """Classifies an image by the class level nearest to its mean (logits: minus the distance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(x.mean(dim=(1, 2, 3))[:, None] - LEVELS[None, :]).abs()


class RealImagesOf(nn.Module):
    """A 'generator' that returns fresh real images of class (c + shift) mod 10 for G(z, c)."""

    def __init__(self, shift: int):
        super().__init__()
        self.shift = shift
        self.generator = torch.Generator().manual_seed(123)
        self.dummy = nn.Parameter(torch.zeros(()))  # a device to live on, as G's parameters give

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return toy_images((c + self.shift) % CLASSES, self.generator)


def _real_set(per_class: int = 600):
    labels = torch.arange(per_class * CLASSES) % CLASSES
    return toy_images(labels, torch.Generator().manual_seed(0)), labels


def test_per_class_accuracy_counts_each_class_and_marks_empty_ones():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    acc = per_class_accuracy(predicted, labels, 4)
    assert acc[:3] == pytest.approx([0.5, 2 / 3, 1.0]) and math.isnan(acc[3])
    with pytest.raises(ValueError, match="shape"):
        per_class_accuracy(predicted[:3], labels, 4)


def test_ratio_min_and_mean():
    fidelity = ClassFidelity(fake_accuracy=[0.9, 0.3, 0.0], real_accuracy=[0.9, 0.6, 0.0])
    assert fidelity.ratio[:2] == pytest.approx([1.0, 0.5]) and math.isnan(fidelity.ratio[2])
    assert fidelity.min_ratio == pytest.approx(0.5) and fidelity.mean_ratio == pytest.approx(0.75)
    assert fidelity.as_dict()["fake_mean_accuracy"] == pytest.approx(0.4)
    same = class_fidelity(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    assert same.fake_accuracy == [1.0, 1.0] and same.real_accuracy == [1.0, 0.0]


def test_real_images_of_the_wrong_class_have_fidelity_zero():
    real, labels = _real_set()
    fidelity = generator_fidelity(RealImagesOf(shift=5), NearestLevel(), real, labels, CLASSES, z_dim=4, per_class=300)
    assert fidelity.fake_accuracy == [0.0] * CLASSES
    assert fidelity.min_ratio == 0.0 and fidelity.mean_ratio == 0.0


def test_real_images_of_the_asked_class_have_the_classifiers_real_accuracy():
    real, labels = _real_set()
    fidelity = generator_fidelity(RealImagesOf(shift=0), NearestLevel(), real, labels, CLASSES, z_dim=4, per_class=600)
    assert 0.3 < fidelity.real_accuracy[6] < 0.7  # the confusable class ...
    assert min(a for c, a in enumerate(fidelity.real_accuracy) if c != 6) > 0.95  # ... and the easy ones
    assert fidelity.fake_accuracy[6] == pytest.approx(fidelity.real_accuracy[6], abs=0.1)
    assert all(r == pytest.approx(1.0, abs=0.2) for r in fidelity.ratio)
    assert fidelity.mean_ratio == pytest.approx(1.0, abs=0.05)


def test_a_generator_that_never_draws_the_confusable_class_right_is_seen_by_min_ratio():
    real, labels = _real_set()

    class NoShirts(RealImagesOf):
        def forward(self, z, c):  # class 6 drawn as class 0: a pullover for every shirt
            return toy_images(torch.where(c == 6, torch.zeros_like(c), c), self.generator)

    fidelity = generator_fidelity(NoShirts(0), NearestLevel(), real, labels, CLASSES, z_dim=4, per_class=300)
    assert fidelity.ratio[6] == 0.0 and fidelity.min_ratio == 0.0
    assert fidelity.mean_ratio > 0.85  # the average over classes hides it


def test_class_balanced_samples_are_balanced_repeatable_and_keep_the_mode():
    G = RealImagesOf(0).train()
    images, labels = class_balanced_samples(G, z_dim=4, num_classes=CLASSES, per_class=7, seed=3, batch=16)
    assert images.shape == (70, 1, 8, 8) and torch.bincount(labels).tolist() == [7] * CLASSES
    assert G.training  # eval only while sampling
    levels = torch.unique(((images + 1) * 127.5).flatten())
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # quantised to the 256 levels of real images

    class Noise(nn.Module):
        def forward(self, z, c):
            return torch.tanh(z[:, :1, None, None].expand(-1, 1, 8, 8))

    first, _ = class_balanced_samples(Noise(), 4, CLASSES, 5, seed=1)
    again, _ = class_balanced_samples(Noise(), 4, CLASSES, 5, seed=1, batch=3)
    torch.testing.assert_close(first, again)


def test_per_class_recall_sees_swapped_and_collapsed_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.zeros(CLASSES, 4)
    centres[:, 0] = torch.arange(CLASSES) * 20.0  # classes far apart: a fake of c is never near reals of c + 1

    def features(labels):
        return centres[labels] + torch.randn(len(labels), 4, generator=g)

    labels = torch.arange(3000) % CLASSES
    real = features(labels)
    good = per_class_recall(real, labels, features(labels), labels, CLASSES)
    assert min(good) > 0.8
    # the same fakes under shifted labels: overall recall would be perfect, per class it is nothing
    swapped = per_class_recall(real, labels, features(labels), (labels + 1) % CLASSES, CLASSES)
    assert max(swapped) == 0.0
    # class 3 collapsed to one point: only that class loses its recall
    fake = features(labels)
    fake[labels == 3] = fake[labels == 3][0]
    collapsed = per_class_recall(real, labels, fake, labels, CLASSES)
    assert collapsed[3] < 0.01 and min(r for c, r in enumerate(collapsed) if c != 3) > 0.8
    assert math.isnan(per_class_recall(real, labels, fake[:20], labels[:20], CLASSES)[0])  # 2 fakes <= k
