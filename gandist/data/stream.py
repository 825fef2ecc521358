"""Reading WebDataset shards into per-rank streams of uint8 image batches.

    shard spec -> shard URLs (paths, brace patterns, lists, index.json folders, pipe:/http(s) URLs)
      endless (training): each worker draws shards at random, seeded by (seed, rank, worker, restart)
      finite (evaluation): shards split by rank, then by worker; each shard read once
    -> tar samples (gandist.shards.iter_tar) -> shuffle buffer of encoded samples
    -> decode to uint8 H x W x C, check the size, flip -> written into a preallocated batch
    -> DataLoader workers (batch_size=None) -> pinned host batch -> device, normalised there

Every rank gets an endless stream, so every rank draws the same number of batches and no rank
waits for another at an epoch boundary (see docs/design.md). The loader is deliberately NOT passed
through `accelerator.prepare`. Bad samples (undecodable image, wrong size, missing image, truncated
or unreadable shard) are skipped and counted without webdataset's 0.5 s sleep per sample; the counts
travel with the batches to `ShardLoader`, which the loop reports per tick. Too many bad samples stop
the run with an error naming the spec.

Batches are stored channels-last (N x H x W x C in memory, seen as N x C x H x W): decoders produce
H x W x C, and `to_device_float` gives the model the memory format it wants on the device.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import random
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gandist.data.images import BadSample, decode_array
from gandist.data.shards import TruncatedShard
from gandist.data.specs import STOP_READS, DataError, ReadsStopped, iter_shard

_WARN_FIRST = 3  # bad samples described on stderr per worker; the rest are only counted


def decode_image(sample: dict, channels: int, resolution: int) -> torch.Tensor:
    """Decode the image of a sample to a uint8 C x H x W tensor, checking its size (raises BadSample)."""
    array = decode_array(sample, channels)
    if array.shape[0] != resolution or array.shape[1] != resolution:
        raise BadSample(
            f"is {array.shape[1]}x{array.shape[0]} px, expected {resolution}x{resolution} (model.resolution)"
        )
    array = np.broadcast_to(array, (resolution, resolution, channels)).transpose(2, 0, 1)
    return torch.from_numpy(array.copy())  # decoders may return read-only arrays (np.frombuffer, PIL's buffer)


def sample_label(sample: dict) -> int:
    """The class of a sample (its `cls`), -1 for a sample without one; raises BadSample for a bad one."""
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
    timeout_s: float = 0.0
    """Longest wait for the next bytes of a remote shard (pipe:, http); 0: no bound."""


def stream_seed(seed: int, rank: int, worker: int, restart: int) -> int:
    """The seed of one worker's stream: distinct per rank, worker and restart, the same in every run."""
    return int(np.random.SeedSequence([seed, rank, worker, restart]).generate_state(1)[0])


class _Health:
    """One worker's counts of samples read and skipped; raises when too many are bad."""

    def __init__(self, spec: StreamSpec, worker: int):
        self.spec, self.worker = spec, worker
        self.read = self.bad = self.bad_shards = 0
        self.first: str | None = None

    def unreadable(self, url: str, reason: str) -> None:
        """A whole shard could not be read: counted apart from bad samples."""
        self.bad_shards += 1
        if self.bad_shards <= _WARN_FIRST:
            print(
                f"gandist data: skipped shard {url}: cannot be read: {reason[:300]} "
                f"(rank {self.spec.rank} worker {self.worker}); counted in data/bad_shards",
                file=sys.stderr,
            )

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
    """One rank's stream of (images, labels, bad, read, bad_shards) batches, formed in the worker.

    images: uint8 N x C x H x W (channels-last storage); labels: int64 N, -1 where a sample has no
    `cls`; bad / read / bad_shards: samples skipped / read, and shards that could not be read, by this
    worker since its previous batch.
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
                for sample in iter_shard(url, self.spec.timeout_s, self.spec.source):
                    health.read += 1
                    yield sample
            except TruncatedShard as e:
                if health.read == read_before:  # not one sample: the whole shard is unreadable
                    health.unreadable(url, str(e))
                else:
                    health.read += 1
                    health.skip(f"the rest of shard {url}", str(e))
            except OSError as e:
                health.unreadable(url, str(e))
            except ReadsStopped:  # this worker is being stopped (SIGTERM): end the stream quietly
                return
            empty_in_a_row = 0 if health.read > read_before else empty_in_a_row + 1
            if empty_in_a_row >= 10 * len(self.spec.urls) + 10:  # an endless stream would spin forever
                raise DataError(f"data.shards={self.spec.source!r}: {empty_in_a_row} shards in a row held no sample")

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int, int, int]]:
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
        n, reported_bad, reported_read, reported_shards = 0, 0, 0, 0

        def emit(count: int) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
            nonlocal reported_bad, reported_read, reported_shards
            out = images[:count].permute(0, 3, 1, 2), labels[:count]
            bad, read = health.bad - reported_bad, health.read - reported_read
            shards = health.bad_shards - reported_shards
            reported_bad, reported_read, reported_shards = health.bad, health.read, health.bad_shards
            return *out, bad, read, shards

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
                classes[n] = sample_label(sample)
            except BadSample as e:
                health.skip(f"sample {sample['__key__']!r} of {sample['__url__']}", str(e))
                continue
            if array.shape[2] == pixels.shape[3]:
                pixels[n] = array
            else:  # grey into RGB: three plain copies beat one broadcasting copy several times over
                pixels[n, :, :, 0] = pixels[n, :, :, 1] = pixels[n, :, :, 2] = array[:, :, 0]
            if spec.xflip and rng.random() < 0.5:
                images[n] = images[n].flip(1)  # torch's flip is faster than numpy's reversed copy of H x W x 3
            n += 1
            if n == batch_size:
                yield emit(n)
                images, labels = new_batch()  # the old ones left with the batch
                pixels, classes = images.numpy(), labels.numpy()
                n = 0
        health.check(final=True)
        if n or health.read > reported_read or health.bad_shards > reported_shards:  # the rest of a finite stream
            yield emit(n)


class ShardLoader:
    """Iterates (images, labels) batches of a DataLoader over a ShardStream and keeps the bad-sample counts."""

    def __init__(self, dataloader: torch.utils.data.DataLoader):
        self.dataloader = dataloader
        self.bad = self.read = self.bad_shards = 0  # this tick, this rank
        self.bad_total = self.bad_shards_total = 0  # this job (since the start or resume), all ranks
        self._iterator = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # start the DataLoader now, not at the first next(): it draws its base seed from torch's
        # global generator, and the caller may want to fence that off (exact resume)
        self._iterator = iter(self.dataloader)
        return self._counted(self._iterator)

    def close(self) -> None:
        """Stop the loader's worker processes now (before a checkpoint: a worker that exits later is no error)."""
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        for worker in getattr(iterator, "_workers", []):  # one that did not leave when asked ignores SIGTERM
            if worker.is_alive():
                worker.kill()

    def _counted(self, batches: Iterator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, bad, read, bad_shards in batches:
            self.bad += bad
            self.read += read
            self.bad_shards += bad_shards
            if len(images):
                yield images, labels

    def tick_stats(
        self, reduce_mean: Callable[[torch.Tensor], torch.Tensor], world_size: int, device: torch.device
    ) -> dict:
        """Bad samples and unreadable shards of this tick and of the run, summed over ranks (a collective: all
        ranks call it)."""
        local = torch.tensor([self.bad, self.read, self.bad_shards], dtype=torch.float64, device=device)
        bad, read, bad_shards = (reduce_mean(local) * world_size).round().long().tolist()
        self.bad = self.read = self.bad_shards = 0
        self.bad_total += bad
        self.bad_shards_total += bad_shards
        return {
            "data/bad_samples": bad,
            "data/bad_total": self.bad_total,
            "data/samples_read": read,
            "data/bad_shards": bad_shards,
            "data/bad_shards_total": self.bad_shards_total,
        }


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
    if num_workers > 0:
        _kill_workers_at_exit()
    kwargs = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers > 0 else {}
    dataloader = torch.utils.data.DataLoader(
        ShardStream(spec),
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        worker_init_fn=leave_signals_to_the_trainer,
        **kwargs,
    )
    return ShardLoader(dataloader)


def leave_signals_to_the_trainer(_worker_id: int = 0) -> None:
    """In a loader worker: the stop signals that reach the whole process group are the trainer's to act on.

    Ctrl-C and USR1/USR2 are ignored; SIGTERM only ends a wait for a stalled shard (the trainer is stopping),
    so the worker stays until the trainer shuts it down and a stop never finds a dead worker.
    """
    for name in ("SIGINT", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: STOP_READS.set())
    sys.excepthook = functools.partial(_quiet_abandoned_handoff, sys.excepthook)


def _quiet_abandoned_handoff(report: Callable, kind: type, error: BaseException, tb) -> None:
    """A worker hands a batch's shared memory over through multiprocessing's resource sharer, whose thread reports
    a dropped connection with sys.excepthook: a trainer interrupted by a stop mid-handoff is no error."""
    frames = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb)]
    if issubclass(kind, (EOFError, ConnectionError)) and any(f.endswith("resource_sharer.py") for f in frames):
        return
    report(kind, error, tb)


@functools.cache
def _kill_workers_at_exit() -> None:
    """Loader workers leave SIGTERM to their trainer, so the terminate() with which Python ends daemonic children
    at exit would not end them: end any left (a loader nobody closed) with SIGKILL first (atexit runs this before
    multiprocessing's own exit handler, registered earlier).

    torch's SIGCHLD handler raises for every worker that dies while its loader is open: raised between two kills,
    it would leave the rest alive and multiprocessing's exit handler waiting on them for ever. So the handler is
    set back to the default first; the process is exiting and nothing is left to report a worker's death to."""

    def kill() -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()

    atexit.register(kill)


def to_device_float(images: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    """uint8 [0, 255] host batch -> float [-1, 1] on the device (copy first, convert there)."""
    images = images.to(device, non_blocking=True)
    return (images.float() / 127.5 - 1.0).contiguous(memory_format=memory_format)
