"""Sample-quality metrics of a generator against a dataset: FD, KID, precision and recall.

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

from gandist.metrics.features import FeatureNet, load_feature_net
from gandist.metrics.frechet import feature_stats, frechet_distance
from gandist.metrics.kid import kernel_distance
from gandist.metrics.precision_recall import precision_recall
from gandist.metrics.reference import ReferenceSpec, load_reference
from gandist.reporting.progress import Steps


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 256 levels real images have, staying in [-1, 1] floats."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


class Evaluator:
    """Computes metrics of generators against one reference set; the reference is embedded on first use.

    `cfg` is the `metrics` config section (feature_net, num_fake, kid_subsets, kid_subset_size, pr_k,
    batch); `strategy` gives the device, rank, world size and collectives. Calls are collective: every
    rank must make them.
    """

    def __init__(self, cfg: Any, reference: ReferenceSpec, strategy, say: Callable[[str], None] = print):
        self.cfg, self.spec, self.strategy, self.say = cfg, reference, strategy, say
        self.device, self.rank, self.world = strategy.device, strategy.rank, strategy.world_size
        self.net: FeatureNet = load_feature_net(cfg.feature_net, self.device)
        self._reference: dict | None = None
        self._loaded = False

    def reference(self) -> dict | None:
        """Reference statistics (rank 0; None on other ranks), loaded or computed once (collective)."""
        if not self._loaded:
            self._reference = load_reference(self.net, self.spec, self.device, self.strategy, self.say)
            self._loaded = True
        return self._reference

    @torch.no_grad()
    def fake_features(self, G: nn.Module, z_dim: int, num_classes: int, seed: int = 0) -> torch.Tensor:
        """Features of metrics.num_fake images of G (all ranks' shares, on every rank)."""
        # all latents come from one generator and each rank takes its slice: the same images
        # (and so the same numbers) for any number of ranks
        per_rank = math.ceil(self.cfg.num_fake / self.world)
        generator = torch.Generator().manual_seed(seed)
        all_z = torch.randn(per_rank * self.world, z_dim, generator=generator)
        all_c = torch.randint(0, max(num_classes, 1), (per_rank * self.world,), generator=generator)
        mine = slice(self.rank * per_rank, (self.rank + 1) * per_rank)
        local = []
        with Steps("generating and embedding fakes", self.cfg.num_fake, enabled=self.rank == 0) as steps:
            for z, c in zip(all_z[mine].split(self.cfg.batch), all_c[mine].split(self.cfg.batch)):
                images = G(z.to(self.device), c.to(self.device) if num_classes else None)
                local.append(self.net(quantize(images)))
                steps.update(min(len(z) * self.world, self.cfg.num_fake - steps.n))
        return self.strategy.all_gather_rows(torch.cat(local))[: self.cfg.num_fake]

    def __call__(self, G: nn.Module, z_dim: int, num_classes: int = 0, seed: int = 0) -> dict[str, float]:
        """{metrics/fid_<net>, metrics/kid_<net>, metrics/precision_<net>, metrics/recall_<net>, metrics/seconds}."""
        start = time.perf_counter()
        reference = self.reference()
        was_training = G.training
        G.eval()
        try:
            fake = self.fake_features(G, z_dim, num_classes, seed).cpu()
        finally:
            G.train(was_training)
        results = None
        if self.rank == 0:
            name = self.net.name
            mu, sigma = feature_stats(fake)
            real = reference["features"]
            precision, recall = precision_recall(real, fake, k=self.cfg.pr_k)
            results = {
                f"metrics/fid_{name}": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
                f"metrics/kid_{name}": kernel_distance(
                    real, fake, self.cfg.kid_subsets, self.cfg.kid_subset_size, torch.Generator().manual_seed(seed)
                ),
                f"metrics/precision_{name}": precision,
                f"metrics/recall_{name}": recall,
                "metrics/seconds": round(time.perf_counter() - start, 3),
            }
        return self.strategy.broadcast_object(results)
