"""Sample-quality metrics of a generator against a dataset: FD, KID, precision/recall, density/coverage, and
for class-conditional generators per-class recall and class fidelity (metrics/fidelity.py).

every rank: draw its share of metrics.num_fake images from G (fixed seeds: repeatable numbers),
            quantise them to 8 bits like the real images, embed them with the feature network
gather the features; rank 0 compares them with the cached reference statistics
every rank receives the results (so they can go through the per-tick statistics)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gandist.metrics.coverage import density_coverage
from gandist.metrics.features import FeatureNet, load_feature_net, quantize
from gandist.metrics.fidelity import ClassFidelity, per_class_accuracy, per_class_recall
from gandist.metrics.frechet import feature_stats, frechet_distance
from gandist.metrics.kid import kernel_distance
from gandist.metrics.precision_recall import precision_recall
from gandist.metrics.reference import ReferenceSpec, load_reference
from gandist.reporting.progress import Steps

COVERAGE_K = 5  # k of density and coverage's k-NN balls: Naeem et al.'s choice


class Evaluator:
    """Computes metrics of generators against one reference set; the reference is embedded on first use.

    `cfg` is the `metrics` config section (feature_net, classifier, num_fake, kid_subsets, kid_subset_size,
    pr_k, batch); `strategy` gives the device, rank, world size and collectives. Calls are collective: every
    rank must make them.
    """

    def __init__(self, cfg: Any, reference: ReferenceSpec, strategy, say: Callable[[str], None] = print):
        self.cfg, self.spec, self.strategy, self.say = cfg, reference, strategy, say
        self.device, self.rank, self.world = strategy.device, strategy.rank, strategy.world_size
        self.net: FeatureNet = load_feature_net(cfg.feature_net, self.device)
        classifier = getattr(cfg, "classifier", "")
        self.classifier: FeatureNet | None = load_feature_net(classifier, self.device) if classifier else None
        self._reference: dict | None = None
        self._loaded = False

    def reference(self) -> dict | None:
        """Reference statistics (rank 0; None on other ranks), loaded or computed once (collective)."""
        if not self._loaded:
            self._reference = load_reference(self.net, self.spec, self.device, self.strategy, self.say, self.classifier)
            self._loaded = True
        return self._reference

    @torch.no_grad()
    def fakes(self, G: nn.Module, z_dim: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """(features, asked classes, the classifier's classes or -1) of metrics.num_fake images of G, every rank's
        share, on every rank. Sample i asks for class i mod num_classes: class-balanced samples."""
        # all latents come from one generator and each rank takes its slice: the same images
        # (and so the same numbers) for any number of ranks
        per_rank = math.ceil(self.cfg.num_fake / self.world)
        generator = torch.Generator().manual_seed(seed)
        all_z = torch.randn(per_rank * self.world, z_dim, generator=generator)
        all_c = torch.arange(per_rank * self.world) % max(num_classes, 1)
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        classify = self.classifier is not None and num_classes > 0
        local = []
        with Steps("generating and embedding fakes", self.cfg.num_fake, enabled=self.rank == 0) as steps:
            for z, c in zip(all_z[mine].split(self.cfg.batch), all_c[mine].split(self.cfg.batch)):
                images = quantize(G(z.to(self.device), c.to(self.device) if num_classes else None))
                seen = self.classifier(images).argmax(dim=1).cpu() if classify else torch.full_like(c, -1)
                local.append(torch.cat([c[:, None].float(), seen[:, None].float(), self.net(images).cpu()], dim=1))
                steps.update(min(len(z) * self.world, self.cfg.num_fake - steps.n))
        rows = self.strategy.all_gather_rows(torch.cat(local).to(self.device)).cpu()[: self.cfg.num_fake]
        return rows[:, 2:], rows[:, 0].long(), rows[:, 1].long()

    def __call__(self, G: nn.Module, z_dim: int, num_classes: int = 0, seed: int = 0) -> dict[str, float]:
        """{metrics/fid_<net>, kid_<net>, precision_<net>, recall_<net>, coverage_<net>, density_<net>, seconds},
        and for a class-conditional G the per-class metrics (class_metrics)."""
        start = time.perf_counter()
        reference = self.reference()
        was_training = G.training
        G.eval()
        try:
            fake, asked, seen = self.fakes(G, z_dim, num_classes, seed)
        finally:
            G.train(was_training)
        results = None
        if self.rank == 0:
            name = self.net.name
            scores = distribution_scores(
                reference["features"], reference["mu"], reference["sigma"], fake,
                self.cfg.pr_k, self.cfg.kid_subsets, self.cfg.kid_subset_size, seed,
            )  # fmt: skip
            # logged as metrics/<score>_<feature net>, FD under its usual name (metrics/fid_inception: FID)
            results = {f"metrics/{'fid' if key == 'fd' else key}_{name}": value for key, value in scores.items()}
            if num_classes:
                results.update(class_metrics(reference, fake, asked, seen, num_classes, name, self.cfg.pr_k))
            results["metrics/seconds"] = round(time.perf_counter() - start, 3)
        return self.strategy.broadcast_object(results)


def distribution_scores(
    real: torch.Tensor,
    mu: torch.Tensor,
    sigma: torch.Tensor,
    fake: torch.Tensor,
    pr_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """How close fake features are to real ones (real: the reference features, mu and sigma their statistics):
    {fd, kid, precision, recall (k=pr_k), density, coverage (k=COVERAGE_K)}. KID's subsets come from `seed`."""
    precision, recall = precision_recall(real, fake, k=pr_k)
    density, coverage = density_coverage(real, fake, k=COVERAGE_K)
    return {
        "fd": frechet_distance(*feature_stats(fake), mu, sigma),
        "kid": kernel_distance(real, fake, kid_subsets, kid_subset_size, torch.Generator().manual_seed(seed)),
        "precision": precision,
        "recall": recall,
        "coverage": coverage,
        "density": density,
    }


def class_metrics(
    reference: dict, fake: torch.Tensor, asked: torch.Tensor, seen: torch.Tensor, num_classes: int, name: str, k: int
) -> dict[str, float]:
    """Per-class recall (when the reference images have classes) and, when a classifier saw the samples, class
    fidelity: its accuracy on the samples of each class, on the real images of that class, and their ratio."""
    out: dict[str, float] = {}
    labels = reference.get("labels")
    if labels is not None and bool((labels >= 0).any()):
        recall = per_class_recall(reference["features"], labels, fake, asked, num_classes, k)
        out.update({f"metrics/class_recall_{name}/{c}": r for c, r in enumerate(recall)})
        out[f"metrics/class_recall_{name}_min"] = min((r for r in recall if not math.isnan(r)), default=math.nan)
    if "real_accuracy" in reference and bool((seen >= 0).any()):
        real_accuracy = reference["real_accuracy"][:num_classes]
        fidelity = ClassFidelity(per_class_accuracy(seen, asked, num_classes), real_accuracy)
        for c, (fake_acc, real_acc, ratio) in enumerate(zip(fidelity.fake_accuracy, real_accuracy, fidelity.ratio)):
            out[f"metrics/class_accuracy_fake/{c}"] = fake_acc
            out[f"metrics/class_accuracy_real/{c}"] = real_acc
            out[f"metrics/class_fidelity/{c}"] = ratio
        out["metrics/class_fidelity_min"] = fidelity.min_ratio
        out["metrics/class_fidelity_mean"] = fidelity.mean_ratio
    return out
