"""Class fidelity, per-class recall and coverage through the Evaluator (what `gandist evaluate` and in-training
metrics report), on toy data where the answers are known: each class is an image brightness, and the classifier
reads the brightness."""

from pathlib import Path

import numpy as np
import pytest
import torch

from gandist.data.shards import write_shards
from gandist.data.stream import to_device_float
from gandist.metrics import Evaluator
from gandist.metrics import reference as reference_module
from gandist.metrics.reference import ReferenceSpec
from tests.unit.test_metrics import _metrics_cfg, _single

K = 10


def _level(c: int) -> float:
    """Class c's brightness in [-1, 1]."""
    return (c * 25 + 12) / 127.5 - 1


class Brightness(torch.nn.Module):
    """A classifier of the toy classes: the class whose brightness is nearest the image's mean."""

    def __init__(self, wrong_for: int = -1):
        super().__init__()
        self.register_buffer("levels", torch.tensor([_level(c) for c in range(K)]))
        order = list(range(K))
        if wrong_for >= 0:  # it confuses this class and the next, on real images too
            order[wrong_for], order[(wrong_for + 1) % K] = order[(wrong_for + 1) % K], order[wrong_for]
        self.register_buffer("order", torch.tensor(order))

    def forward(self, x):
        logits = -((x.mean(dim=(1, 2, 3))[:, None] - self.levels[None, :]) ** 2) * 1000
        return logits[:, self.order]


@pytest.fixture
def class_shards(tmp_path: Path) -> str:
    rng = np.random.default_rng(1)
    samples = []
    for i in range(120):
        c = i % K
        image = np.clip(c * 25 + 12 + rng.normal(0, 3, (32, 32)), 0, 255).astype(np.uint8)
        samples.append((image, c))
    write_shards(samples, tmp_path / "shards", "cls", shard_size=40, fmt="png", meta={"resolution": 32, "channels": 1})
    return str(tmp_path / "shards" / "cls-{000000..000002}.tar")


class ReplayByClass(torch.nn.Module):
    """A 'generator' that draws the real images of class c + shift (cycling through them) when asked for c."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int):
        super().__init__()
        self.by_class = [images[labels == c] for c in range(K)]
        self.shift, self.drawn = shift, [0] * K

    def forward(self, z, c):
        out = []
        for asked in c.tolist():
            pool = self.by_class[(asked + self.shift) % K]
            out.append(pool[self.drawn[asked] % len(pool)])
            self.drawn[asked] += 1
        return torch.stack(out)


def _evaluator(tmp_path, shards, classifier: str):
    stats = str(tmp_path / "stats")
    cfg = _metrics_cfg(tmp_path, classifier=classifier, num_fake=120, kid_subsets=5, batch=40, stats_cache=stats)
    return Evaluator(cfg, ReferenceSpec.of(cfg, shards, 32, 1), _single(), say=lambda s: None)


def _reals(shards):
    batches = list(reference_module.iter_labelled(reference_module.expand_shards(shards), 1, 32, 64))
    images = torch.cat([b for b, _ in batches])
    return to_device_float(images, torch.device("cpu"), torch.contiguous_format), torch.cat([y for _, y in batches])


def _classifier(tmp_path, wrong_for=-1) -> str:
    path = tmp_path / f"brightness{wrong_for}.pt"
    torch.jit.save(torch.jit.script(Brightness(wrong_for)), str(path))
    return str(path)


def test_a_generator_of_the_asked_class_has_fidelity_one_and_of_the_wrong_class_zero(tmp_path, class_shards):
    evaluator = _evaluator(tmp_path, class_shards, _classifier(tmp_path))
    images, labels = _reals(class_shards)
    right = evaluator(ReplayByClass(images, labels, shift=0), z_dim=4, num_classes=K)
    wrong = evaluator(ReplayByClass(images, labels, shift=1), z_dim=4, num_classes=K)
    name = "tiny-features"
    for c in range(K):
        assert right[f"metrics/class_accuracy_real/{c}"] == 1.0  # the classifier knows every real image
        assert right[f"metrics/class_accuracy_fake/{c}"] == 1.0 and right[f"metrics/class_fidelity/{c}"] == 1.0
        assert wrong[f"metrics/class_fidelity/{c}"] == 0.0
        assert right[f"metrics/class_recall_{name}/{c}"] == 1.0  # every real image of c is drawn for c
        assert wrong[f"metrics/class_recall_{name}/{c}"] == 0.0
    assert right["metrics/class_fidelity_min"] == 1.0 and wrong["metrics/class_fidelity_min"] == 0.0
    # over all classes the wrong-class generator draws the data all the same: only the per-class metrics see it
    for key in (f"metrics/coverage_{name}", f"metrics/recall_{name}"):
        assert right[key] == 1.0 and wrong[key] == 1.0


def test_fidelity_is_measured_against_the_classifiers_accuracy_on_real_images(tmp_path, class_shards):
    # a classifier that swaps classes 3 and 4 on every image: real accuracy 0 there, fidelity undefined; the
    # generator of the asked classes is as recognisable as the data everywhere else
    evaluator = _evaluator(tmp_path, class_shards, _classifier(tmp_path, wrong_for=3))
    images, labels = _reals(class_shards)
    right = evaluator(ReplayByClass(images, labels, shift=0), z_dim=4, num_classes=K)
    for c in (3, 4):
        assert right[f"metrics/class_accuracy_real/{c}"] == 0.0 and np.isnan(right[f"metrics/class_fidelity/{c}"])
    assert right["metrics/class_accuracy_fake/5"] == 1.0 and right["metrics/class_fidelity_min"] == 1.0
    assert right["metrics/class_fidelity_mean"] == 1.0


def test_without_a_classifier_per_class_recall_and_coverage_are_still_reported(tmp_path, class_shards):
    evaluator = _evaluator(tmp_path, class_shards, "")
    images, labels = _reals(class_shards)
    results = evaluator(ReplayByClass(images, labels, shift=0), z_dim=4, num_classes=K)
    assert not any(key.startswith("metrics/class_fidelity") for key in results)
    assert results["metrics/class_recall_tiny-features_min"] == 1.0 and "metrics/coverage_tiny-features" in results
