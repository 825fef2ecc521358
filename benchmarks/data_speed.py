#!/usr/bin/env python3
"""Images per second of one loader worker, per storage format, against a plain PIL decode loop.

    python benchmarks/data_speed.py                          # 32 px grey, 32 and 64 px RGB; all formats
    python benchmarks/data_speed.py --res 64 --formats png,npy --images 8000 --repeats 5 --json out.json

For each image size and format, the same Fashion-MNIST images (grey; RGB = the grey image in all
three channels; synthetic patterns if Debian's dataset-fashion-mnist is missing) are written as
shards once, then measured in this one process, interleaved and repeated (median of --repeats) so
that machine noise hits all alike:

  plain      a loop decoding the same encoded images from memory: PIL open + convert + np.asarray
             (np.load for npy); no tar, no shuffle, no batching
  worker     what one DataLoader worker of gandist does: ShardStream over the shards (endless,
             resampled, page-cached), shuffle buffer 1000, decode, size check, random flip, batch
  wds        webdataset's own pipeline for reference: WebDataset(...).shuffle(1000).decode(...)
             .to_tuple(...).batched(batch)
  dataloader the loader as training uses it: a DataLoader with one worker (adds the hand-over of
             each batch to the training process); and the training process's own CPU time per batch,
             which bounds what any number of workers can deliver to one GPU process

Rates are images per CPU-second of the one process doing the work (the DataLoader worker's CPU
time is read from /proc), so that other jobs on a shared machine do not distort them; wall-clock
rates are in the JSON lines too (`*_wall`). Then: loader workers needed to feed each GPU speed of
docs/design.md, and for the 70,000 images/s per node goal. Prints one JSON line per measurement
and markdown tables.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gandist.data.images import resize  # noqa: E402
from gandist.data.prepare import (  # noqa: E402
    FASHION_MNIST_DIR,  # noqa: E402
    read_idx,
)
from gandist.data.shards import write_shards  # noqa: E402
from gandist.data.stream import ShardStream, StreamSpec, iter_shard  # noqa: E402

# images/s of the DCGAN on one H100 (docs/design.md, plain_gan.py): what one GPU's loader must deliver
GPU_SPEEDS = {
    64: {
        "fp32 b256": 27_022,
        "fp32 b1024": 30_571,
        "bf16 b1024": 36_746,
        "bf16+channels_last b1024": 69_208,
        "bf16+compile b1024": 54_725,
        "ZeRO-2 bf16 b1024": 29_515,
    },
    32: {"bf16+channels_last b512": 60_166},
}
NODE_GOAL = 70_000
NODE_CORES = 16


def source_images(count: int) -> tuple[np.ndarray, str]:
    """count grey 28 x 28 images: Fashion-MNIST if installed, else smooth synthetic patterns."""
    path = FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz"
    if path.is_file():
        return read_idx(path)[:count], "Fashion-MNIST train images"
    yy, xx = np.mgrid[0:28, 0:28]
    images = [((np.sin(xx / (2 + i % 5)) + np.cos(yy / (3 + i % 7))) * 60 + 128).astype(np.uint8) for i in range(count)]
    return np.stack(images), "synthetic patterns (dataset-fashion-mnist not installed)"


def make_shards(folder: Path, images: np.ndarray, res: int, channels: int, fmt: str) -> list[str]:
    """Write the images at res px with channels as 4 shards; returns their paths."""
    resized = [resize(image, res) for image in images]
    if channels == 3:
        resized = [np.repeat(image[:, :, None], 3, axis=2) for image in resized]
    samples = ((image, i % 10) for i, image in enumerate(resized))
    paths = write_shards(samples, folder, "bench", shard_size=math.ceil(len(images) / 4), fmt=fmt)
    return [str(p) for p in paths]


class Clock:
    """Wall time and CPU time of this process (and of other processes by pid) over a window.

    CPU time is what the benchmark reports first: on a shared machine other jobs stretch wall time,
    while images per CPU-second of one core is what decides how many workers a GPU needs.
    """

    def __init__(self, pids: tuple[int, ...] = ()):
        self.pids = pids
        self.wall, self.cpu, self.child = time.perf_counter(), time.process_time(), self._child_cpu()

    def _child_cpu(self) -> float:
        total = 0.0
        for pid in self.pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        return total

    def rates(self, images: int) -> dict[str, float]:
        """images per wall second, per CPU second of this process, per CPU second of the other pids."""
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        out = {"wall": images / wall, "cpu": images / max(cpu, 1e-9), "cpu_s": cpu}
        if self.pids:
            out["child"] = images / max(self._child_cpu() - self.child, 1e-9)
        return out


def time_plain(blobs: list[bytes], fmt: str, mode: str) -> dict[str, float]:
    """A plain decode loop over encoded images in memory."""
    clock = Clock()
    for blob in blobs:
        if fmt == "npy":
            np.load(io.BytesIO(blob))
        else:
            with Image.open(io.BytesIO(blob)) as image:
                np.asarray(image.convert(mode))
    return clock.rates(len(blobs))


def _take(stream, batches: int, batch: int, pids: tuple[int, ...] = ()) -> dict[str, float]:
    for _ in range(5):  # fill the shuffle buffer and the prefetch queue outside the clock
        next(stream)
    clock = Clock(pids)
    for _ in range(batches):
        next(stream)
    return clock.rates(batches * batch)


def time_worker(urls: list[str], res: int, channels: int, batch: int, count: int) -> dict[str, float]:
    """What one gandist loader worker does (ShardStream in this process)."""
    spec = StreamSpec(urls, batch, res, channels, seed=0, rank=0, shuffle_buffer=1000, xflip=True)
    return _take(iter(ShardStream(spec)), max(1, count // batch), batch)


def time_wds(urls: list[str], fmt: str, channels: int, batch: int, count: int) -> dict[str, float]:
    """webdataset's standard pipeline (one process)."""
    import webdataset as wds

    dataset = (
        wds.WebDataset(urls, resampled=True, shardshuffle=False, nodesplitter=wds.single_node_only)
        .shuffle(1000)
        .decode("l8" if channels == 1 else "rgb8")
        .to_tuple(fmt, "cls")
        .batched(batch)
    )
    return _take(iter(dataset), max(1, count // batch), batch)


def time_dataloader(urls: list[str], res: int, channels: int, batch: int, count: int) -> dict[str, float]:
    """A DataLoader with one worker, as in training: the worker's images per CPU-second (child) and
    the trainer's CPU time per batch (cpu_s / batches), the serial cost of receiving batches that
    bounds what any number of workers can deliver to one GPU process."""
    spec = StreamSpec(urls, batch, res, channels, seed=0, rank=0, shuffle_buffer=1000, xflip=True)
    loader = torch.utils.data.DataLoader(
        ShardStream(spec), batch_size=None, num_workers=1, prefetch_factor=4, persistent_workers=True
    )
    stream = iter(loader)
    next(stream)
    pids = tuple(w.pid for w in getattr(stream, "_workers", []))  # private, but the only handle on the worker
    batches = max(1, count // batch)
    out = _take(stream, batches, batch, pids)
    out["trainer_us_per_batch"] = out["cpu_s"] / batches * 1e6
    del stream, loader
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4000, help="images per shard set (and per measurement)")
    p.add_argument("--batch", type=int, default=256, help="batch per GPU")
    p.add_argument("--repeats", type=int, default=3, help="median over this many interleaved rounds")
    p.add_argument("--formats", default="png,jpg,webp,npy")
    p.add_argument("--sizes", default="32x1,32x3,64x3", help="resolution x channels, comma-separated")
    p.add_argument("--no-wds", action="store_true", help="skip the webdataset reference pipeline")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    a = p.parse_args()
    torch.set_num_threads(1)
    images, origin = source_images(a.images)
    formats = a.formats.split(",")
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    print(f"# {origin}, {a.images} images, batch {a.batch}, median of {a.repeats}; load {os.getloadavg()[0]:.2f}")
    print(f"# {os.cpu_count()} CPU(s) here; every rate is images per CPU-second of ONE process", flush=True)

    results: dict[tuple, dict[str, list[float]]] = {}
    meta: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for res, channels in sizes:
            for fmt in formats:
                urls = make_shards(Path(tmp) / f"{res}x{channels}-{fmt}", images, res, channels, fmt)
                blobs = [s[fmt] for url in urls for s in iter_shard(url)]
                meta[(res, channels, fmt)] = {"urls": urls, "blobs": blobs, "bytes": sum(map(len, blobs)) / len(blobs)}
        for _ in range(a.repeats):
            for (res, channels, fmt), m in meta.items():
                r = results.setdefault((res, channels, fmt), {})
                mode = "L" if channels == 1 else "RGB"
                measured = {
                    "plain": time_plain(m["blobs"], fmt, mode),
                    "worker": time_worker(m["urls"], res, channels, a.batch, a.images),
                    "dataloader": time_dataloader(m["urls"], res, channels, a.batch, a.images),
                }
                if not a.no_wds:
                    measured["wds"] = time_wds(m["urls"], fmt, channels, a.batch, a.images)
                for name, rates in measured.items():
                    r.setdefault(f"{name}_wall", []).append(rates["wall"])
                    r.setdefault(name, []).append(rates["child"] if name == "dataloader" else rates["cpu"])
                r.setdefault("trainer_us_per_batch", []).append(measured["dataloader"]["trainer_us_per_batch"])

    rows = []
    for (res, channels, fmt), r in results.items():
        row = {
            "res": res,
            "channels": channels,
            "format": fmt,
            **{k: round(statistics.median(v)) for k, v in r.items()},
        }
        row["bytes_per_image"] = round(meta[(res, channels, fmt)]["bytes"])
        row["worker_vs_plain"] = round(row["worker"] / row["plain"], 2)
        row["trainer_limit"] = round(a.batch / (row["trainer_us_per_batch"] / 1e6))
        rows.append(row)
        print(json.dumps(row))

    print(
        "\n| size | format | bytes/img | plain PIL img/s | gandist worker img/s | ratio | DataLoader, 1 worker "
        "| trainer CPU us/batch (limit img/s) | webdataset img/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        size, wds = f"{row['res']} px x{row['channels']}", f"{row['wds']:,}" if "wds" in row else "-"
        print(
            f"| {size} | {row['format']} | {row['bytes_per_image']:,} | {row['plain']:,} | {row['worker']:,} | "
            f"{row['worker_vs_plain']} | {row['dataloader']:,} | {row['trainer_us_per_batch']:,} "
            f"({row['trainer_limit']:,}) | {wds} |"
        )

    print("\nLoader workers per GPU process = ceil(GPU img/s / img/s of one DataLoader worker), RGB:")
    for res, speeds in GPU_SPEEDS.items():
        measured = [row for row in rows if row["res"] == res and row["channels"] == 3]
        if not measured:
            continue
        print(f"\n| {res} px GPU setting (img/s) | " + " | ".join(row["format"] for row in measured) + " |")
        print("|---|" + "---|" * len(measured))
        for name, speed in {**speeds, f"node goal {NODE_GOAL:,}": NODE_GOAL}.items():
            needed = [math.ceil(speed / row["dataloader"]) for row in measured]
            label = name if name.startswith("node") else f"{name} ({speed:,})"
            print(f"| {label} | " + " | ".join(str(n) for n in needed) + " |")
    print(f"\n(a {NODE_CORES}-core node keeps a core or two for the training process and its pin-memory thread)")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
