"""Reference statistics of a dataset in a feature space: computed once, cached next to the shards.

    cache file: <folder of the first shard>/gandist-stats/<net>-<key>.pt
                (the embedded sample and unwritable folders: ~/.cache/gandist/stats/, or metrics.stats_cache)

The key hashes the feature network's file, the shard list (paths, sizes, modification times),
the resolution, the channels and the number of images, so a changed dataset or network is never
served stale statistics. The file holds the mean and covariance of all embedded images and the
features of a fixed random subset of them (for KID and precision/recall).

Distributed: sample i (in shard order) is embedded by rank i % world; features are gathered through
the strategy's collectives; rank 0 writes the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gandist.data.images import BadSample, decode_array
from gandist.data.shards import TruncatedShard
from gandist.data.specs import EMBEDDED_DIR, DataError, expand_shards, iter_shard, read_index
from gandist.data.stream import sample_label, to_device_float
from gandist.files import atomic_write
from gandist.loading import load_plain
from gandist.metrics.features import FeatureNet
from gandist.metrics.fidelity import per_class_accuracy
from gandist.metrics.frechet import feature_stats
from gandist.reporting.progress import Steps

FORMAT = "labels/1"  # what a cache file holds besides the statistics: the classes of the kept features
USER_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gandist" / "stats"


@dataclass(frozen=True)
class ReferenceSpec:
    """Which reference images, prepared how, and how many of their features are kept."""

    shards: str
    """Shard spec of the reference images (metrics.reference, else data.shards; empty: the embedded sample)."""
    resolution: int
    channels: int
    batch: int = 256
    """Images per forward of the feature network."""
    limit: int = 0
    """Embed only the first N images in shard order (0: all)."""
    keep_features: int = 10_000
    """Features of a fixed random subset kept for KID and precision/recall."""
    cache_dir: str = ""
    """Folder for the cached statistics; empty: next to the shards (or the user cache)."""

    @classmethod
    def of(cls, metrics: Any, shards: str, resolution: int, channels: int) -> ReferenceSpec:
        """The spec a `metrics` config section describes for these shards."""
        return cls(
            shards, resolution, channels, metrics.batch, metrics.num_real, metrics.real_features, metrics.stats_cache
        )


def _samples(urls: list[str]) -> Iterator[dict]:
    """Every sample of the shards in order (gandist's tar reader); a damaged shard is an error naming it."""
    for url in urls:
        try:
            yield from iter_shard(url)
        except (TruncatedShard, OSError) as e:
            raise DataError(
                f"reference shard {url} cannot be read to its end ({e}): statistics need every image; "
                "re-create the shard (gandist prepare) or leave it out of metrics.reference"
            ) from None


def iter_images(
    urls: list[str], channels: int, resolution: int, batch: int, rank: int = 0, world: int = 1, limit: int = 0
) -> Iterator[torch.Tensor]:
    """uint8 N x C x H x W batches of this rank's share of the first `limit` samples (0: all), in shard order."""
    for images, _ in iter_labelled(urls, channels, resolution, batch, rank, world, limit):
        yield images


def iter_labelled(
    urls: list[str], channels: int, resolution: int, batch: int, rank: int = 0, world: int = 1, limit: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """iter_images with each image's class (its `cls`; -1 for a sample without one)."""
    pixels = np.empty((batch, resolution, resolution, channels), np.uint8)
    labels = np.empty(batch, np.int64)
    n = 0
    for index, sample in enumerate(_samples(urls)):
        if limit and index >= limit:
            break
        if index % world != rank:
            continue
        try:
            array, label = decode_array(sample, channels), sample_label(sample)
        except BadSample as e:
            raise DataError(f"reference sample {sample['__key__']!r} of {sample['__url__']}: {e}") from None
        if array.shape[:2] != (resolution, resolution):
            raise DataError(
                f"reference sample {sample['__key__']!r} of {sample['__url__']} is {array.shape[1]}x{array.shape[0]} "
                f"px, expected {resolution}x{resolution} (model.resolution): prepare the reference images as the "
                "training images (gandist prepare --resolution)"
            )
        pixels[n], labels[n] = array, label  # a grey image broadcasts to RGB
        n += 1
        if n == batch:
            yield torch.from_numpy(pixels.copy()).permute(0, 3, 1, 2), torch.from_numpy(labels.copy())
            n = 0
    if n:
        yield torch.from_numpy(pixels[:n].copy()).permute(0, 3, 1, 2), torch.from_numpy(labels[:n].copy())


def _local(url: str) -> Path | None:
    if url.startswith("file:"):
        return Path(url[5:])
    if ":" in url.split("/", 1)[0]:  # http:, pipe:, s3: ...
        return None
    return Path(url)


def cache_path(
    urls: list[str],
    net: FeatureNet,
    resolution: int,
    channels: int,
    limit: int,
    cache_dir: str,
    classifier: FeatureNet | None = None,
) -> Path:
    """Where the reference statistics of these shards in this feature space (and, with a classifier, its
    accuracy on them) are or will be cached."""
    described = []
    for url in urls:
        path = _local(url)
        if path is not None and path.is_file():
            st = path.stat()
            described.append([str(path.resolve()), st.st_size, st.st_mtime_ns])
        else:
            described.append([url])
    key = [described, net.identity, resolution, channels, limit, FORMAT]
    payload = json.dumps(key + ([classifier.identity] if classifier is not None else [])).encode()
    name = f"{net.name}-{hashlib.sha256(payload).hexdigest()[:16]}.pt"
    if cache_dir:
        return Path(cache_dir) / name
    first = _local(urls[0])
    if first is None or first.resolve().parent == EMBEDDED_DIR.resolve():
        return USER_CACHE / name
    folder = first.resolve().parent / "gandist-stats"
    if not os.access(first.resolve().parent, os.W_OK) and not folder.is_dir():
        return USER_CACHE / name
    return folder / name


def known_count(urls: list[str]) -> int | None:
    """How many samples the shards hold, from their index.json (None when it does not say)."""
    found = read_index(urls)
    if found is None:
        return None
    index, path = found
    names = [Path(u).name for u in urls]
    if all(Path(u).parent == path.parent for u in urls) and sorted(names) == sorted(index.get("shards", [])):
        return index.get("num_samples")
    counts = dict(zip(index.get("shards", []), index.get("shard_samples", [])))
    return sum(counts[n] for n in names) if all(n in counts for n in names) else None


def compute_reference(
    net: FeatureNet,
    spec: ReferenceSpec,
    urls: list[str],
    device: torch.device,
    strategy,
    classifier: FeatureNet | None = None,
) -> dict:
    """Embed the reference images (every rank its share) and return their statistics (on every rank).

    With a classifier (images -> N x K logits), also its accuracy on the images of each class (`real_accuracy`).
    """
    rank, world = strategy.rank, strategy.world_size
    batches = iter_labelled(urls, spec.channels, spec.resolution, spec.batch, rank, world, spec.limit)
    total = known_count(urls)
    total = min(total, spec.limit) if total and spec.limit else (total or spec.limit or None)
    local = []
    with Steps("reference statistics", total, enabled=rank == 0) as steps:
        for images, labels in batches:
            x = to_device_float(images, device, torch.contiguous_format)
            predicted = classifier(x).argmax(dim=1) if classifier is not None else torch.full_like(labels, -1)
            columns = [labels[:, None].double(), predicted.cpu()[:, None].double(), net(x).cpu().double()]
            local.append(torch.cat(columns, dim=1))
            steps.update(len(images) * world)  # every rank embeds about as many
    if not local:  # a rank with no share still needs the feature width for the gather
        width = net(torch.zeros(1, spec.channels, spec.resolution, spec.resolution, device=device)).shape[1]
        local = [torch.zeros(0, 2 + width, dtype=torch.float64)]
    mine = torch.cat(local)
    # back to shard order (rank r holds samples r, r + world, ...): the same result for any world size
    index = torch.arange(mine.shape[0], dtype=torch.float64)[:, None] * world + rank
    gathered = strategy.all_gather_rows(torch.cat([index, mine], dim=1).to(device)).cpu()
    rows = gathered[gathered[:, 0].argsort()]
    labels, predicted, features = rows[:, 1].long(), rows[:, 2].long(), rows[:, 3:].float()
    if features.shape[0] < 2:
        raise ValueError(f"reference shards {urls[0]}... hold {features.shape[0]} image(s): need at least 2")
    mu, sigma = feature_stats(features)
    subset = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(0))[: spec.keep_features]
    kept = subset.sort().values
    stats = {"mu": mu, "sigma": sigma, "features": features[kept].clone(), "labels": labels[kept].clone()}
    stats["count"] = features.shape[0]
    if classifier is not None and bool((labels >= 0).any()):
        blank = torch.zeros(1, spec.channels, spec.resolution, spec.resolution, device=device)
        classes = int(classifier(blank).shape[1])
        stats["real_accuracy"] = per_class_accuracy(predicted, labels, classes)
    return stats


def load_reference(
    net: FeatureNet,
    spec: ReferenceSpec,
    device: torch.device,
    strategy,
    say: Callable[[str], None] = print,
    classifier: FeatureNet | None = None,
) -> dict | None:
    """The reference statistics on rank 0 (None elsewhere), from the cache or computed and cached (collective).

    `strategy` gives rank, world_size and the collectives (gandist.strategy.Strategy); with a `classifier`
    the statistics include its per-class accuracy on the reference images.
    """
    urls = expand_shards(spec.shards)
    path = cache_path(urls, net, spec.resolution, spec.channels, spec.limit, spec.cache_dir, classifier)
    main = strategy.rank == 0
    if strategy.broadcast_object(path.is_file() if main else None):
        return load_plain(path) if main else None
    if main:
        shards = spec.shards or "the embedded sample"
        say(f"gandist: computing reference statistics of {shards} in the {net.name} space")
    stats = compute_reference(net, spec, urls, device, strategy, classifier)
    if main:
        atomic_write(path, lambda tmp: torch.save(stats, tmp))
        say(f"gandist: reference statistics of {stats['count']} images cached in {path}")
    strategy.barrier()
    return stats if main else None
