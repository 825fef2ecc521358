"""A generated dataset: N images of a trained G as WebDataset shards, split across every rank of a launch.

    gandist generate runs/NAME --num 50000 --out gen/                        # one process
    gandist generate runs/NAME --per-class 6000 --out gen/                   # 6000 of each class (conditional G)
    accelerate launch --config_file launch/gpus_1node.yaml -m gandist.cli generate runs/NAME --num 1000000 --out gen/

    samples 0 .. N-1  -> shard k holds samples [k * S, (k + 1) * S)                (S = --shard-size)
    rank r of W       -> the contiguous shards [K * r // W, K * (r + 1) // W)      (K shards in all)
    each shard        -> z and label of sample i from (seed, i) only -> G_ema (eval) -> uint8
                      -> written as NAME-%06d.tar (the format `prepare` writes), key = global index i,
                         under a temporary name until complete
    all ranks done    -> rank 0 writes index.json

Shards, not samples, are split across ranks and each shard is generated in the same batches
whatever the number of ranks, so the shards hold the same images (byte for byte on the same
kind of device) for 1 or 64 processes, and every key 0 .. N-1 is written exactly once. Training
reads them directly: `data.shards=gen/NAME-{000000..00000K}.tar` (K from index.json).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gandist.config import to_dict
from gandist.data.images import FORMATS
from gandist.data.shards import INDEX_NAME, ShardWriter, sample_files, write_index
from gandist.generator.load import SamplingError, TrainedGenerator
from gandist.generator.sample import check_class_options, labels_for, render_indices, to_uint8
from gandist.training.checkpoint import manifest


@dataclass
class GenerateSpec:
    """What to generate and where to put it."""

    num: int | None
    """Number of images N (keys 0 .. N-1); None when per_class gives it."""
    out_dir: Path
    """Folder for the shards and index.json."""
    name: str = "generated"
    """Shard name prefix: NAME-000000.tar, ..."""
    fmt: str = "png"
    """Image encoding in the shards: png, jpg, webp or npy."""
    shard_size: int = 2000
    """Images per shard (the last one may hold fewer)."""
    batch: int = 256
    """Images per forward pass of G on each rank."""
    seed: int = 0
    """Noise seed: sample i's z depends on (seed, i) only."""
    truncation: float | None = None
    """Truncation psi (|z| > psi redrawn), None: plain N(0, I)."""
    class_id: int | None = None
    """Class of every image (conditional models)."""
    balanced: bool = False
    """Sample i gets class i mod num_classes (conditional models)."""
    compress: bool = False
    """Write .tar.gz shards."""
    overwrite: bool = False
    """Replace an earlier generated dataset of this name in out_dir."""
    per_class: int | None = None
    """N images of each class (conditional models): num = N x classes, sample i of class i mod classes."""


def check_count(spec: GenerateSpec) -> None:
    """Refuse a missing or impossible image count (--num or --per-class), before any model is read."""
    if spec.per_class is not None:
        if spec.num is not None:
            raise SamplingError("--num and --per-class exclude each other: --per-class N writes N images of each class")
        if spec.per_class < 1:
            raise SamplingError(f"--per-class must be >= 1 (images of each class), got {spec.per_class}")
        if spec.class_id is not None or spec.balanced:
            option = f"--class {spec.class_id}" if spec.class_id is not None else "--class-balanced"
            raise SamplingError(f"--per-class balances the classes itself: drop {option}")
        return
    if spec.num is None:
        raise SamplingError("how many images? pass --num N, or --per-class N for N images of each class")
    if spec.num < 1:
        raise SamplingError(f"--num must be >= 1 (number of images to generate), got {spec.num}")


def validate(spec: GenerateSpec, classes: int) -> None:
    """Raise SamplingError for impossible requests, naming the option; checks the output folder too."""
    check_count(spec)
    if spec.per_class is not None and classes == 0:
        raise SamplingError("--per-class: the model is unconditional (it has no classes); use --num instead")
    if spec.shard_size < 1:
        raise SamplingError(f"--shard-size must be >= 1, got {spec.shard_size}")
    if spec.batch < 1:
        raise SamplingError(f"--batch must be >= 1, got {spec.batch}")
    if spec.fmt not in FORMATS:
        raise SamplingError(f"--format {spec.fmt!r} is not one of {', '.join(FORMATS)}")
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise SamplingError(f"--name {spec.name!r} must be a plain file name prefix (no '/', not hidden)")
    if spec.truncation is not None and not spec.truncation > 0:
        raise SamplingError(f"--truncation must be > 0, got {spec.truncation}")
    check_class_options(classes, spec.class_id, spec.balanced or spec.per_class is not None)
    if spec.out_dir.exists() and not spec.out_dir.is_dir():
        raise SamplingError(f"--out {spec.out_dir} exists and is not a folder")
    existing = previous_output(spec)
    if existing and not spec.overwrite:
        shown = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise SamplingError(
            f"--out {spec.out_dir} already holds a dataset ({shown}): pass --overwrite to replace it, "
            "or choose another folder or --name"
        )


def resolved(spec: GenerateSpec, classes: int) -> GenerateSpec:
    """The spec with --per-class N spelled out (a validated spec): N x classes images, class i mod classes.

    Labels i mod classes give each class exactly N of the N x classes keys, and any shard of
    `classes` consecutive keys holds every class once: balanced by construction.
    """
    if spec.per_class is None:
        return spec
    return replace(spec, num=spec.per_class * classes, balanced=True)


def previous_output(spec: GenerateSpec) -> list[Path]:
    """Files of an earlier dataset with this name in the output folder (index and shards)."""
    if not spec.out_dir.is_dir():
        return []
    found = sorted(spec.out_dir.glob(f"{spec.name}-[0-9]*.tar*"))
    index = spec.out_dir / INDEX_NAME
    return ([index] if index.is_file() else []) + [p for p in found if ".tmp" not in p.name]


def shard_ranges(num: int, shard_size: int) -> list[range]:
    """Sample indices of each shard: shard k holds [k * shard_size, min((k + 1) * shard_size, num))."""
    return [range(start, min(start + shard_size, num)) for start in range(0, num, shard_size)]


def rank_shards(num_shards: int, world: int, rank: int) -> range:
    """The contiguous shard ids of one rank; ranks' counts differ by at most one, and together cover all."""
    return range(num_shards * rank // world, num_shards * (rank + 1) // world)


def shard_path(spec: GenerateSpec, shard_id: int) -> Path:
    """Final path of shard `shard_id`."""
    return spec.out_dir / f"{spec.name}-{shard_id:06d}{'.tar.gz' if spec.compress else '.tar'}"


def _shard_samples(tg: TrainedGenerator, spec: GenerateSpec, indices: range) -> Iterator[tuple[np.ndarray, int | None]]:
    """(uint8 image, label) of each index, generated batch by batch (batches counted from the shard's
    start, so they are the same whichever rank writes the shard)."""
    for start in range(0, len(indices), spec.batch):
        part = indices[start : start + spec.batch]
        images, labels = render_indices(tg, part, spec.seed, spec.truncation, spec.class_id, spec.balanced, spec.batch)
        pixels = to_uint8(images).permute(0, 2, 3, 1).numpy()
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]  # write_shards takes H x W for grey images
        for k in range(len(part)):
            yield pixels[k], None if labels is None else int(labels[k])


def write_shard(tg: TrainedGenerator, spec: GenerateSpec, shard_id: int, indices: range) -> dict:
    """Generate one shard's images and write it in place (keys: global sample indices); its entry for the index."""
    with ShardWriter(spec.out_dir, spec.name, len(indices), compress=spec.compress, first_shard=shard_id) as writer:
        for index, (image, label) in zip(indices, _shard_samples(tg, spec, indices)):
            writer.write(f"{index:08d}", sample_files(image, label, spec.fmt))
    return {"shard": writer.paths[0].name, "id": shard_id, "num_samples": len(indices)}


def dataset_meta(tg: TrainedGenerator, spec: GenerateSpec) -> dict:
    """What index.json says about the images beyond write_shards' own fields (no process count: it
    must not depend on how the work was split)."""
    m = tg.cfg.model
    classes = tg.num_classes
    meta = {
        "resolution": m.resolution,
        "channels": m.channels,
        "num_classes": classes,
        "keys": "global sample index, zero-padded to 8 digits",
        "source": f"generated by gandist from {tg.checkpoint} ({tg.net}, {tg.nimg} images shown)",
        "generator": {
            "checkpoint": str(tg.checkpoint),
            # which weights, not only where they were: a run trained again writes a checkpoint of the same name
            "checkpoint_sha256": manifest(tg.checkpoint) if tg.checkpoint else None,
            "net": tg.net,
            "nimg": tg.nimg,
            "model": to_dict(tg.cfg)["model"],
            "seed": spec.seed,
            "truncation": spec.truncation,
            "class": spec.class_id,
            "class_balanced": spec.balanced,
            "per_class": spec.per_class,
            "noise": "z_i ~ N(0, I) from Philox(key=seed, counter=(0, 0, i, 0)); truncation redraws |z| > psi",
        },
    }
    if classes:
        labels = labels_for(range(spec.num), classes, spec.class_id, spec.balanced)
        meta["label_counts"] = {str(c): int((labels == c).sum()) for c in range(classes)}
    return meta


class SingleProcess:
    """The one rank of a plain, unlaunched process (a notebook, a script)."""

    rank, world_size, is_main = 0, 1, True

    def barrier(self) -> None:
        """Nothing to wait for."""

    def gather_objects(self, obj: object) -> list:
        """This process's object, as the only rank's."""
        return [obj]


def generate(tg: TrainedGenerator, spec: GenerateSpec, strategy=None) -> dict | None:
    """Write this rank's shards; once every rank is done, rank 0 writes index.json and returns it.

    `strategy` gives rank, world_size, is_main, barrier and gather_objects (gandist.strategy.Strategy
    under a launch; None: this process alone). Every rank must call this with the same spec.
    """
    from gandist.reporting.progress import Steps

    strategy = strategy or SingleProcess()
    validate(spec, tg.num_classes)
    spec = resolved(spec, tg.num_classes)
    ranges = shard_ranges(spec.num, spec.shard_size)
    mine = rank_shards(len(ranges), strategy.world_size, strategy.rank)
    if strategy.is_main:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        for old in previous_output(spec):
            old.unlink()
    strategy.barrier()

    todo = sum(len(ranges[k]) for k in mine)
    start = time.perf_counter()
    entries = []
    # a bar on a terminal, plain lines in a log file (reporting/progress.py)
    with Steps(f"generate (rank 0 of {strategy.world_size})", todo, enabled=strategy.is_main) as steps:
        for shard_id in mine:
            entries.append(write_shard(tg, spec, shard_id, ranges[shard_id]))
            steps.update(len(ranges[shard_id]))
    elapsed = time.perf_counter() - start

    done = [entry for rank_entries in strategy.gather_objects(entries) for entry in rank_entries]
    if not strategy.is_main:
        return None
    done = sorted(done, key=lambda e: e["id"])
    if [e["id"] for e in done] != list(range(len(ranges))) or sum(e["num_samples"] for e in done) != spec.num:
        raise RuntimeError(f"generate: ranks returned shards {[e['id'] for e in done]} for {len(ranges)} shards")
    index = {
        "name": spec.name,
        "num_samples": spec.num,
        "format": spec.fmt,
        "shards": [e["shard"] for e in done],
        "shard_samples": [e["num_samples"] for e in done],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **dataset_meta(tg, spec),
    }
    write_index(spec.out_dir, index)
    last = len(ranges) - 1
    suffix = ".tar.gz" if spec.compress else ".tar"
    print(
        f"gandist generate: {spec.num} images in {len(ranges)} shard(s) -> {spec.out_dir} "
        f"(rank 0: {todo / max(elapsed, 1e-9):.0f} img/s); train on them with "
        f"data.shards={spec.out_dir}/{spec.name}-{{000000..{last:06d}}}{suffix}",
        flush=True,
    )
    return index
