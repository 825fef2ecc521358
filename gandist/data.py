"""Reading WebDataset shards into per-rank streams of uint8 image batches.

    shard spec -> shard URLs (paths, brace patterns, lists, index.json folders, pipe:/http(s) URLs)
      endless (training): each worker draws shards at random, seeded by (seed, rank, worker, restart)
      finite (evaluation): shards split by rank, then by worker; each shard read once
    -> tar samples (gandist.shards.iter_tar) -> shuffle buffer of encoded samples
    -> decode to uint8 H x W x C, check the size, flip -> written into a preallocated batch
    -> DataLoader workers (batch_size=None) -> pinned host batch -> device, normalised there

Every rank gets an endless stream, so every rank draws the same number of batches and no rank
waits for another at an epoch boundary (see shared/DESIGN.md). The loader is deliberately NOT passed
through `accelerator.prepare`. Bad samples (undecodable image, wrong size, missing image, truncated
or unreadable shard) are skipped and counted without webdataset's 0.5 s sleep per sample; the counts
travel with the batches to `ShardLoader`, which the loop reports per tick. Too many bad samples stop
the run with an error naming the spec.

Batches are stored channels-last (N x H x W x C in memory, seen as N x C x H x W): decoders produce
H x W x C, and `to_device_float` gives the model the memory format it wants on the device.
"""

from __future__ import annotations

import ast
import io
import json
import random
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import braceexpand
import numpy as np
import torch
from PIL import Image
from webdataset.gopen import gopen, gopen_schemes

from gandist.config import ConfigError
from gandist.shards import INDEX_NAME, TruncatedShard, group_samples, iter_tar

EMBEDDED_DIR = Path(__file__).parent / "assets" / "fashion_mnist"
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "npy")
_URL = re.compile(r"^([a-z][a-z0-9+.-]*):")
_WARN_FIRST = 3  # bad samples described on stderr per worker; the rest are only counted


class DataError(ConfigError):
    """A data problem (missing shards, wrong image size, too many bad samples), naming the spec or shard."""


class BadSample(ValueError):
    """One sample that cannot be used; it is skipped and counted."""


# ----------------------------------------------------------------------------------------------
# Shard specs


def _is_local(url: str) -> bool:
    match = _URL.match(url)
    return match is None or match.group(1) == "file"


def _local_path(url: str) -> Path:
    return Path(re.sub(r"^file://?", "", url) if url.startswith("file:") else url)


def _index_urls(folder: Path, spec: str) -> list[str]:
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise DataError(
            f"data.shards={spec!r}: {folder} is a folder without {INDEX_NAME}; name its shards, "
            f"e.g. {folder}/NAME-{{000000..000009}}.tar, or create it with `gandist prepare SRC {folder}`"
        )
    try:
        shards = json.loads(index_path.read_text())["shards"]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"data.shards={spec!r}: {index_path} is not a shard index ({e!r})") from None
    return [str(folder / name) for name in shards]


def expand_shards(spec: str | Sequence[str]) -> list[str]:
    """Turn a shard spec into a list of URLs.

    A spec is a path, a brace pattern (`dir/name-{000000..000099}.tar`), a folder holding an
    `index.json` (`gandist prepare` output), a URL (`pipe:CMD`, `http(s)://...`, `file:`), a
    comma-separated list of these or a Python list; empty: the embedded Fashion-MNIST sample.
    Local shards must exist; the error names the spec and the first missing file.
    """
    text = spec if isinstance(spec, str) else ",".join(spec)
    if not text.strip():
        return _index_urls(EMBEDDED_DIR, "<embedded>")
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec)]
    urls: list[str] = []
    for part in parts:
        if part and not _URL.match(part) and Path(part).is_dir():
            urls.extend(_index_urls(Path(part), text))
        elif part:
            urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise DataError(f"data.shards={text!r} names no shard")
    for url in urls:
        match = _URL.match(url)
        if match and match.group(1) not in gopen_schemes and match.group(1) != "file":
            known = ", ".join(sorted(k for k in gopen_schemes if not k.startswith("_")))
            raise DataError(f"data.shards={text!r}: {url!r} has an unknown scheme {match.group(1)!r} (known: {known})")
        if _is_local(url):
            path = _local_path(url)
            if path.is_dir():
                raise DataError(
                    f"data.shards={text!r}: {path} is a folder; name its shards, "
                    f"e.g. {path}/NAME-{{000000..000009}}.tar"
                )
            if not path.is_file():
                raise DataError(f"data.shards={text!r}: shard {path} does not exist")
    return urls


def read_index(urls: list[str]) -> tuple[dict, Path] | None:
    """The `index.json` next to the first shard, if it exists and lists that shard."""
    if not urls or not _is_local(urls[0]):
        return None
    first = _local_path(urls[0])
    index_path = first.parent / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or first.name not in index.get("shards", []):
        return None
    return index, index_path


def open_shard(url: str) -> BinaryIO:
    """Open a shard for reading: local paths directly, other URLs through webdataset's gopen."""
    if _is_local(url):
        return open(_local_path(url), "rb", buffering=0)  # iter_tar reads in large chunks itself
    return gopen(url, "rb")


def iter_shard(url: str) -> Iterator[dict]:
    """The samples of one shard; raises TruncatedShard or OSError after the last good one."""
    stream = open_shard(url)
    try:
        yield from group_samples(iter_tar(stream, url), url)
    except TruncatedShard:
        stream.close()  # a pipe: command that failed explains the cut better: its exit status is raised here
        raise
    except BaseException:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - the first error is the one to report
            pass
        raise
    stream.close()  # a pipe: URL whose command failed raises here (its exit status)


def check_dataset(urls: list[str], resolution: int, source: str) -> None:
    """Fail fast if the shards' image size differs from model.resolution.

    Uses the shards' `index.json` when there is one, else decodes the first sample of the first shard.
    """
    found = read_index(urls)
    if found is not None:
        index, path = found
        size, where = index.get("resolution"), str(path)
    else:
        size, where = None, urls[0]
        try:
            for sample in iter_shard(urls[0]):
                size = decode_array(sample, 1).shape[0]
                break
        except (BadSample, TruncatedShard):
            return  # a damaged first sample or shard: the loader skips and counts it
        except OSError as e:  # cannot even be opened (a remote shard, a failing pipe: command)
            raise DataError(f"data.shards={source!r}: cannot read {urls[0]}: {str(e)[:300]}") from None
    if size is not None and int(size) != resolution:
        raise DataError(
            f"data.shards={source!r}: {where} holds {size}x{size} px images but model.resolution={resolution}: "
            f"set model.resolution={size}, or re-create the shards with "
            f"`gandist prepare SRC OUT --resolution {resolution}`"
        )


# ----------------------------------------------------------------------------------------------
# Decoding

_NPY_HEADERS: dict[bytes, tuple[str, bool, tuple]] = {}


def _load_npy(data: bytes) -> np.ndarray:
    """np.load without its per-call overhead: parse (and cache) the header, view the bytes."""
    if data[:6] != b"\x93NUMPY":
        raise BadSample("not an .npy array")
    start = 10 if data[6] == 1 else 12
    length = int.from_bytes(data[8:start], "little")
    header = data[start : start + length]
    parsed = _NPY_HEADERS.get(header)
    if parsed is None:
        d = ast.literal_eval(header.decode("latin1"))
        parsed = _NPY_HEADERS[header] = (d["descr"], d["fortran_order"], tuple(d["shape"]))
    descr, fortran, shape = parsed
    if descr not in ("|u1", "<u1", "u1") or fortran:
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.frombuffer(data, dtype=np.uint8, offset=start + length).reshape(shape)


def _to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """H x W (x C) uint8 -> H x W x 1 or H x W x `channels` (grey stays 1: batches broadcast it to RGB)."""
    if array.dtype != np.uint8:
        raise BadSample(f"array of {array.dtype}, expected uint8")
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise BadSample(f"array of shape {array.shape}, expected H x W (x C)")
    if array.shape[2] not in (1, 3, 4) and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)  # C x H x W
    if array.shape[2] == 4:
        array = array[:, :, :3]
    if channels == 1 and array.shape[2] == 3:  # ITU-R 601-2 luma in PIL's fixed point: equal to convert("L")
        rgb = array.astype(np.uint32)
        luma = rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471 + 0x8000
        return (luma >> 16).astype(np.uint8)[:, :, None]
    return array


def decode_array(sample: dict, channels: int) -> np.ndarray:
    """The image of a sample as uint8 H x W x C (C = `channels`, or 1 for a grey image); raises BadSample."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise BadSample(f"no image ({', '.join(IMAGE_KEYS)}); has {sorted(k for k in sample if k[:2] != '__')}")
    try:
        if key == "npy":
            return _to_channels(_load_npy(sample[key]), channels)
        image = Image.open(io.BytesIO(sample[key]))
        if image.mode != "L" and (channels == 1 or image.mode != "RGB"):
            image = image.convert("L" if channels == 1 else "RGB")
        return _to_channels(np.asarray(image), channels)
    except BadSample:
        raise
    except Exception as e:  # noqa: BLE001 - any decoder failure makes this one sample unusable
        raise BadSample(f"undecodable {key}: {type(e).__name__}: {e}") from None


def decode_image(sample: dict, channels: int, resolution: int) -> torch.Tensor:
    """Decode the image of a sample to a uint8 C x H x W tensor, checking its size (raises BadSample)."""
    array = decode_array(sample, channels)
    if array.shape[0] != resolution or array.shape[1] != resolution:
        raise BadSample(
            f"is {array.shape[1]}x{array.shape[0]} px, expected {resolution}x{resolution} (model.resolution)"
        )
    array = np.broadcast_to(array, (resolution, resolution, channels))
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def _label(sample: dict) -> int:
    if "cls" not in sample:
        return -1
    try:
        return int(sample["cls"])
    except ValueError:
        raise BadSample(f"cls {sample['cls'][:20]!r} is not an integer") from None


# ----------------------------------------------------------------------------------------------
# Streams


@dataclass
class StreamSpec:
    """Everything that defines one rank's stream; picklable so DataLoader workers can rebuild it."""

    urls: list[str]
    batch_per_gpu: int
    resolution: int
    channels: int
    seed: int
    rank: int
    restart: int = 0
    shuffle_buffer: int = 1000
    xflip: bool = False
    world_size: int = 1
    finite: bool = False
    """False: endless resampled stream (training); True: each shard of this rank's share read once."""
    max_bad_frac: float = 0.01
    bad_check_after: int = 1000
    """Samples a worker reads before the bad fraction is judged (a few early bad ones are no verdict)."""
    source: str = ""
    """The spec as the user wrote it, for messages."""
    skip_batches: int = 0
    """Batches this rank already took from this stream (a resumed run continues where it stopped)."""


def stream_seed(seed: int, rank: int, worker: int, restart: int) -> int:
    """The seed of one worker's stream: distinct per rank, worker and restart, the same in every run."""
    return int(np.random.SeedSequence([seed, rank, worker, restart]).generate_state(1)[0])


class _Health:
    """One worker's counts of samples read and skipped; raises when too many are bad."""

    def __init__(self, spec: StreamSpec, worker: int):
        self.spec, self.worker = spec, worker
        self.read = self.bad = 0
        self.first: str | None = None

    def skip(self, what: str, reason: str) -> None:
        spec = self.spec
        self.bad += 1
        reason = reason if len(reason) < 300 else reason[:300] + "..."
        self.first = self.first or f"{what}: {reason}"
        if self.bad <= _WARN_FIRST:
            more = "" if self.bad < _WARN_FIRST else "; further ones are only counted (data/bad_samples in stats.jsonl)"
            print(
                f"gandist data: skipped {what}: {reason} (rank {spec.rank} worker {self.worker}){more}", file=sys.stderr
            )
        self.check(final=False)

    def check(self, final: bool) -> None:
        spec = self.spec
        judged = self.read >= spec.bad_check_after or final
        if judged and self.read and self.bad > spec.max_bad_frac * self.read:
            raise DataError(
                f"data.shards={spec.source!r}: {self.bad} of {self.read} samples read by rank {spec.rank} "
                f"worker {self.worker} were bad ({self.bad / self.read:.1%} > data.max_bad_frac={spec.max_bad_frac}); "
                f"first: {self.first}. Re-create the shards (gandist prepare) or raise data.max_bad_frac"
            )


class ShardStream(torch.utils.data.IterableDataset):
    """One rank's stream of (images, labels, bad, read) batches, formed in the worker.

    images: uint8 N x C x H x W (channels-last storage); labels: int64 N, -1 where a sample has no
    `cls`; bad / read: samples skipped / read by this worker since its previous batch.
    """

    def __init__(self, spec: StreamSpec):
        super().__init__()
        self.spec = spec

    def _shards(self, rng: random.Random, worker: int, num_workers: int) -> Iterator[str]:
        spec = self.spec
        if spec.finite:  # like webdataset's split_by_node then split_by_worker
            yield from spec.urls[spec.rank :: spec.world_size][worker::num_workers]
            return
        while True:  # resampled with replacement, like webdataset's ResampledShards
            yield spec.urls[rng.randrange(len(spec.urls))]

    def _samples(self, shards: Iterator[str], health: _Health) -> Iterator[dict]:
        empty_in_a_row = 0
        for url in shards:
            read_before = health.read
            try:
                for sample in iter_shard(url):
                    health.read += 1
                    yield sample
            except TruncatedShard as e:
                health.read += 1
                health.skip(f"the rest of shard {url}", str(e))
            except OSError as e:
                health.read += 1
                health.skip(f"shard {url}", f"cannot be read: {e}")
            empty_in_a_row = 0 if health.read > read_before else empty_in_a_row + 1
            if empty_in_a_row >= 10 * len(self.spec.urls) + 10:  # an endless stream would spin forever
                raise DataError(f"data.shards={self.spec.source!r}: {empty_in_a_row} shards in a row held no sample")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int]]:
        spec = self.spec
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # The DataLoader takes batch i from worker i % N. After `skip_batches` = k batches, the next
        # one belonged to worker k % N: this worker plays the part of worker (w + k) % N, which had
        # made (w + k) // N batches by then; it replays them without decoding.
        role = (worker + spec.skip_batches) % num_workers
        to_skip = (worker + spec.skip_batches) // num_workers * spec.batch_per_gpu
        rng = random.Random(stream_seed(spec.seed, spec.rank, role, spec.restart))
        health = _Health(spec, worker)
        samples = self._samples(self._shards(rng, worker, num_workers), health)
        buffer: list[dict] = []
        res, batch_size = spec.resolution, spec.batch_per_gpu
        in_worker = info is not None

        def new_batch() -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.empty((batch_size, res, res, spec.channels), dtype=torch.uint8)
            labels = torch.empty(batch_size, dtype=torch.int64)
            if in_worker:  # filled in shared memory: handing the batch to the trainer copies nothing
                images.share_memory_(), labels.share_memory_()
            return images, labels

        images, labels = new_batch()
        pixels, classes = images.numpy(), labels.numpy()  # the same memory: numpy indexing is cheaper per image
        n, reported_bad, reported_read = 0, 0, 0

        def emit(count: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
            nonlocal reported_bad, reported_read
            out = images[:count].permute(0, 3, 1, 2), labels[:count]
            bad, read = health.bad - reported_bad, health.read - reported_read
            reported_bad, reported_read = health.bad, health.read
            return *out, bad, read

        def picks() -> Iterator[dict]:  # a shuffle buffer of still-encoded samples
            for sample in samples:
                if spec.shuffle_buffer <= 1:
                    yield sample
                    continue
                buffer.append(sample)
                if len(buffer) >= spec.shuffle_buffer:
                    j = rng.randrange(len(buffer))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
            rng.shuffle(buffer)
            yield from buffer

        for sample in picks():
            if to_skip:  # same random draws as a kept sample; bad samples in the skipped part are not seen
                to_skip -= 1
                if spec.xflip:
                    rng.random()
                continue
            try:
                array = decode_array(sample, spec.channels)
                if array.shape[0] != res or array.shape[1] != res:
                    raise BadSample(f"is {array.shape[1]}x{array.shape[0]} px, expected {res}x{res} (model.resolution)")
                classes[n] = _label(sample)
            except BadSample as e:
                health.skip(f"sample {sample['__key__']!r} of {sample['__url__']}", str(e))
                continue
            if array.shape[2] == pixels.shape[3]:
                pixels[n] = array
            else:  # grey into RGB: three plain copies beat one broadcasting copy several times over
                pixels[n, :, :, 0] = pixels[n, :, :, 1] = pixels[n, :, :, 2] = array[:, :, 0]
            if spec.xflip and rng.random() < 0.5:
                images[n] = images[n].flip(1)  # torch's flip is ~5x numpy's reversed copy of H x W x 3
            n += 1
            if n == batch_size:
                yield emit(n)
                images, labels = new_batch()  # the old ones left with the batch
                pixels, classes = images.numpy(), labels.numpy()
                n = 0
        health.check(final=True)
        if n or health.read > reported_read:  # the rest of a finite stream (an empty batch still carries counts)
            yield emit(n)


class ShardLoader:
    """Iterates (images, labels) batches of a DataLoader over a ShardStream and keeps the bad-sample counts."""

    def __init__(self, dataloader: torch.utils.data.DataLoader):
        self.dataloader = dataloader
        self.bad = self.read = 0  # this tick, this rank
        self.bad_total = 0  # this job (since the start or resume), all ranks, as of the last tick

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # start the DataLoader now, not at the first next(): it draws its base seed from torch's
        # global generator, and the caller may want to fence that off (exact resume)
        return self._counted(iter(self.dataloader))

    def _counted(self, batches: Iterator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, bad, read in batches:
            self.bad += bad
            self.read += read
            if len(images):
                yield images, labels

    def tick_stats(
        self, reduce_mean: Callable[[torch.Tensor], torch.Tensor], world_size: int, device: torch.device
    ) -> dict:
        """Bad samples of this tick and of the run, summed over ranks (a collective: all ranks call it)."""
        local = torch.tensor([self.bad, self.read], dtype=torch.float64, device=device)
        bad, read = (reduce_mean(local) * world_size).round().long().tolist()
        self.bad = self.read = 0
        self.bad_total += bad
        return {"data/bad_samples": bad, "data/bad_total": self.bad_total, "data/samples_read": read}


def make_loader(spec: StreamSpec, num_workers: int, prefetch_factor: int = 4, pin_memory: bool = False) -> ShardLoader:
    """A loader over a rank's ShardStream; batches are formed in the workers.

    Fails fast if there are fewer shards than readers: per rank in the endless mode, over all ranks
    in the finite mode (where every worker needs its own shards).
    """
    readers = max(num_workers, 1) * (spec.world_size if spec.finite else 1)
    if len(spec.urls) < readers:
        where = f"{spec.world_size} ranks x {max(num_workers, 1)}" if spec.finite else f"{max(num_workers, 1)}"
        raise DataError(
            f"data.shards={spec.source!r} has {len(spec.urls)} shard(s), fewer than the {where} loader workers "
            f"reading them: lower data.num_workers or re-shard into more, smaller shards "
            f"(gandist prepare SRC OUT --shard-size N)"
        )
    kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers > 0 else {}
    dataloader = torch.utils.data.DataLoader(
        ShardStream(spec), batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs
    )
    return ShardLoader(dataloader)


def to_device_float(images: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 [0, 255] host batch -> float [-1, 1] on the device (copy first, convert there)."""
    images = images.to(device, non_blocking=True)
    return (images.float() / 127.5 - 1.0).contiguous(memory_format=memory_format)
