"""Class fidelity of a class-conditional generator: does a classifier see the class that was asked for?

For each class c, with a fixed classifier (any callable from images in [-1, 1] to N x K logits):

    fake accuracy  a_c = fraction of samples G(z, c) the classifier labels c
    real accuracy  r_c = fraction of real images of class c the classifier labels c
    ratio              = a_c / r_c   (1: samples of c are as recognisable as real images of c)

The real accuracy is the yardstick because classes differ in how separable they are (a shirt is
easily taken for a T-shirt even when real); `min_ratio` is the worst class. A generator that
draws real images of the wrong class scores 0, one that draws real images of the asked class
scores about 1.

Per-class recall is improved recall (precision_recall.py) within each class: real images of c
against samples asked to be c, so a generator that covers the data only by drawing the wrong
class for some labels, or that collapses within one class, is seen per class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from gandist.metrics.features import quantize
from gandist.metrics.precision_recall import coverage, knn_radii


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Fraction of samples of each class predicted as that class (NaN for a class without samples)."""
    predicted, labels = predicted.detach().cpu().long(), labels.detach().cpu().long()
    if predicted.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predicted.shape)} and labels {tuple(labels.shape)} differ in shape")
    total = torch.bincount(labels, minlength=num_classes)[:num_classes].double()
    right = torch.bincount(labels[predicted == labels], minlength=num_classes)[:num_classes].double()
    return [float(r / t) if t > 0 else math.nan for r, t in zip(right, total)]


@dataclass
class ClassFidelity:
    """Per-class accuracy of a classifier on samples and on real images, and their ratio."""

    fake_accuracy: list[float]
    real_accuracy: list[float]

    @property
    def ratio(self) -> list[float]:
        """a_c / r_c per class (NaN where the classifier never recognises real images of c)."""
        return [f / r if r > 0 else math.nan for f, r in zip(self.fake_accuracy, self.real_accuracy)]

    @property
    def min_ratio(self) -> float:
        """The worst class's ratio."""
        return min((r for r in self.ratio if not math.isnan(r)), default=math.nan)

    @property
    def mean_ratio(self) -> float:
        """The mean of the per-class ratios."""
        values = [r for r in self.ratio if not math.isnan(r)]
        return sum(values) / len(values) if values else math.nan

    @property
    def fake_mean(self) -> float:
        """Mean per-class accuracy on samples (overall accuracy for class-balanced samples)."""
        return sum(self.fake_accuracy) / len(self.fake_accuracy)

    def as_dict(self) -> dict:
        return {
            "fake_accuracy": self.fake_accuracy,
            "real_accuracy": self.real_accuracy,
            "ratio": self.ratio,
            "min_ratio": self.min_ratio,
            "mean_ratio": self.mean_ratio,
            "fake_mean_accuracy": self.fake_mean,
        }


def class_fidelity(
    fake_predicted: torch.Tensor,
    fake_labels: torch.Tensor,
    real_predicted: torch.Tensor,
    real_labels: torch.Tensor,
    num_classes: int,
) -> ClassFidelity:
    """Fidelity from a classifier's predictions on samples (with the asked classes) and on real images."""
    return ClassFidelity(
        per_class_accuracy(fake_predicted, fake_labels, num_classes),
        per_class_accuracy(real_predicted, real_labels, num_classes),
    )


def per_class_recall(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    fake: torch.Tensor,
    fake_labels: torch.Tensor,
    num_classes: int,
    k: int = 3,
) -> list[float]:
    """Improved recall of each class: real features of c inside the k-NN manifold of the fakes asked to be c."""
    real, fake = real.detach().to("cpu", torch.float32), fake.detach().to("cpu", torch.float32)
    real_labels, fake_labels = real_labels.detach().cpu(), fake_labels.detach().cpu()
    out = []
    for c in range(num_classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(r) == 0 or len(f) <= k:
            out.append(math.nan)
            continue
        out.append(coverage(f, knn_radii(f, k), r))
    return out


@torch.no_grad()
def predict(classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """The classifier's labels (argmax of its logits) for images in [-1, 1], on the CPU."""
    return torch.cat([classifier(images[i : i + batch]).argmax(dim=1).cpu() for i in range(0, len(images), batch)])


@torch.no_grad()
def class_balanced_samples(
    G: nn.Module,
    z_dim: int,
    num_classes: int,
    per_class: int,
    seed: int = 0,
    batch: int = 250,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class samples of every class (sample i asks for class i mod num_classes), quantised to 8 bits like
    real images, on the CPU, with their labels. G runs in eval mode; the noise depends on the seed only."""
    count = per_class * num_classes
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(count, z_dim, generator=generator)
    labels = torch.arange(count) % num_classes
    was_training = G.training
    G.eval()
    try:
        images = [
            quantize(G(z[i : i + batch].to(device), labels[i : i + batch].to(device))).cpu()
            for i in range(0, count, batch)
        ]
    finally:
        G.train(was_training)
    return torch.cat(images), labels


def generator_fidelity(
    G: nn.Module,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    num_classes: int,
    z_dim: int,
    per_class: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> ClassFidelity:
    """Class fidelity of G(z, c) under `classifier`, with its accuracy on labelled real images (in [-1, 1])."""
    images, labels = class_balanced_samples(G, z_dim, num_classes, per_class, seed, device=device)
    return class_fidelity(
        predict(classifier, images.to(device)),
        labels,
        predict(classifier, real_images.to(device)),
        real_labels,
        num_classes,
    )
