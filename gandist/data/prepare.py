"""Turn images into WebDataset shards (`gandist prepare`): sources, encoding in worker processes, writing.

Sources other than shards are shuffled (seed) so every shard mixes all classes; keys are the sample's
position. Shards are written under temporary names and renamed when complete, and `index.json`
(sample count, resolution, channels, classes, format) is written last.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from gandist.data.images import IMAGE_KEYS, decode_array, eight_bit, encode_image, resize
from gandist.data.shards import INDEX_NAME, ShardWriter, make_index, write_index
from gandist.files import atomic_write_text

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
IMAGE_SUFFIXES = {f".{key}" for key in IMAGE_KEYS if key != "npy"}  # the image files training reads, too
_CHUNK = 64  # items per task sent to a worker: large enough to amortise the inter-process hop


class PrepareError(ValueError):
    """A problem with the source or the options, naming the file or option and what would fix it."""


# ----------------------------------------------------------------------------------------------
# Sources: `items()` runs in the main process and is cheap; `load(item)` runs in the workers.


class Source:
    """Where images come from."""

    name = "data"
    classes: list[str] | None = None
    channels: int | None = None  # the source's own channels, if known without reading it all
    description = ""
    shuffle = True  # sources that can be listed up front are shuffled

    def items(self) -> Iterable:
        """Cheap, picklable references to every image, in the source's order."""
        raise NotImplementedError

    def load(self, item) -> tuple[np.ndarray, int | None]:
        """(H x W or H x W x C uint8 image, label or None); raises on an unusable item."""
        raise NotImplementedError

    def label_of(self, item) -> int | None:
        """The item's label (None: unlabelled), without decoding its image where the source allows."""
        return self.load(item)[1]


class IdxSource(Source):
    """MNIST-layout IDX files."""

    def __init__(self, images: Path, labels: Path | None, classes: list[str] | None = None, name: str = "idx"):
        self.images_path, self.labels_path = images, labels
        self.classes, self.name, self.channels = classes, name, 1
        self.description = f"IDX {images}" + (f" + {labels.name}" if labels else "")
        self._images = self._labels = None

    def __getstate__(self) -> dict:  # workers load the arrays themselves instead of receiving them pickled
        return {**self.__dict__, "_images": None, "_labels": None}

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The images and labels (or None), read on first use."""
        if self._images is None:
            self._images = read_idx(self.images_path)
            self._labels = read_idx(self.labels_path) if self.labels_path else None
            if self._labels is not None and len(self._labels) != len(self._images):
                raise PrepareError(
                    f"{self.labels_path} holds {len(self._labels)} labels for {len(self._images)} images"
                )
        return self._images, self._labels

    def items(self) -> list:
        return list(range(len(self.arrays()[0])))

    def load(self, item: int) -> tuple[np.ndarray, int | None]:
        images, labels = self.arrays()
        return images[item], (int(labels[item]) if labels is not None else None)

    def label_of(self, item: int) -> int | None:
        labels = self.arrays()[1]
        return int(labels[item]) if labels is not None else None


class ArraySource(Source):
    """An .npy / .npz array of images, with optional labels."""

    def __init__(self, path: Path, labels: Path | None):
        self.path, self.labels_path, self.name = path, labels, path.stem
        self.description = f"array {path}"
        images, label_array = self._load_arrays()
        self.channels = 1 if images.ndim == 3 or images.shape[-1] == 1 else 3
        self.count = len(images)
        if label_array is not None:
            self.classes = [str(c) for c in range(int(label_array.max()) + 1)]
        self._images = self._labels = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None, "_labels": None}

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        path = self.path
        labels = None
        if path.suffix == ".npz":
            archive = np.load(path, allow_pickle=False)
            keys = list(archive.keys())
            image_key = next((k for k in ("images", "x", "x_train", "arr_0") if k in keys), None)
            if image_key is None:
                raise PrepareError(f"{path}: no images array among {keys}; name it 'images' (and labels 'labels')")
            images = archive[image_key]
            label_key = next((k for k in ("labels", "y", "y_train", "arr_1") if k in keys), None)
            labels = archive[label_key] if label_key else None
        else:
            images = np.load(path, mmap_mode="r", allow_pickle=False)
        if self.labels_path is not None:
            labels = np.load(self.labels_path, allow_pickle=False)
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3, 4)):
            raise PrepareError(f"{path}: images of shape {images.shape}; expected N x H x W or N x H x W x C (C: 1, 3)")
        if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
            raise PrepareError(f"{path}: images of dtype {images.dtype}; expected uint8 or floats in [0, 1]")
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            if len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
                raise PrepareError(
                    f"{self.labels_path or path}: labels must be {len(images)} non-negative integers, "
                    f"got {len(labels)} of {labels.dtype}"
                )
        return images, labels

    def _arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        if self._images is None:
            self._images, self._labels = self._load_arrays()
        return self._images, self._labels

    def items(self) -> list:
        return list(range(self.count))

    def load(self, item: int) -> tuple[np.ndarray, int | None]:
        images, labels = self._arrays()
        image = np.asarray(images[item])
        if image.dtype != np.uint8:
            if image.min() < 0 or image.max() > 1:
                raise PrepareError(f"{self.path}: float image {item} is outside [0, 1]; convert to uint8 first")
            image = (image * 255).round().astype(np.uint8)
        return image, (int(labels[item]) if labels is not None else None)

    def label_of(self, item: int) -> int | None:
        labels = self._arrays()[1]
        return int(labels[item]) if labels is not None else None


def _load_pil(data_or_path) -> np.ndarray:
    with Image.open(data_or_path) as image:
        image = eight_bit(ImageOps.exif_transpose(image))
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV") else "L")
        return np.asarray(image)


class FolderSource(Source):
    """Image files under a folder; the first sub-folder names the class when all images are in sub-folders."""

    def __init__(self, folder: Path):
        self.folder, self.name = folder, folder.name or "images"
        self.description = f"folder {folder}"
        self.paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.paths:
            raise PrepareError(
                f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}), IDX files, index.json or shards found"
            )
        tops = [p.relative_to(folder).parts for p in self.paths]
        if all(len(parts) > 1 for parts in tops):
            self.classes = sorted({parts[0] for parts in tops})
        self._class_of = {name: i for i, name in enumerate(self.classes or [])}
        for path in self.paths[:10]:  # the first readable image tells grey from colour
            try:
                self.channels = 1 if _load_pil(path).ndim == 2 else 3
                break
            except Exception:  # noqa: BLE001 - unreadable files are skipped (and reported) while encoding
                continue

    def items(self) -> list:
        return [str(p) for p in self.paths]

    def load(self, item: str) -> tuple[np.ndarray, int | None]:
        return _load_pil(item), self.label_of(item)

    def label_of(self, item: str) -> int | None:
        if self.classes is None:
            return None
        return self._class_of[Path(item).relative_to(self.folder).parts[0]]


class ShardSource(Source):
    """Existing shards (re-shard / re-encode): read in order in the main process, decoded in the workers."""

    shuffle = False

    def __init__(self, spec: str):
        from gandist.data.specs import expand_shards, read_index

        self.urls = expand_shards(spec)
        self.description = f"shards {spec}"
        found = read_index(self.urls)
        index = found[0] if found else {}
        self.name = index.get("name", "shards")
        self.classes = index.get("classes")
        self.channels = index.get("channels")
        self.total = index.get("num_samples")
        self.bad_shards: list[str] = []

    def items(self) -> Iterator:
        from gandist.data.specs import iter_shard

        for url in self.urls:
            try:
                for sample in iter_shard(url):
                    key = next((k for k in IMAGE_KEYS if k in sample), None)
                    image = (key, sample[key]) if key else None
                    yield (f"{sample['__key__']} of {url}", image, sample.get("cls"))
            except OSError as e:  # a truncated shard: keep what came before, say so at the end
                self.bad_shards.append(f"{url}: {e}")

    def load(self, item) -> tuple[np.ndarray, int | None]:

        where, image, cls = item
        if image is None:
            raise PrepareError(f"{where}: no image")
        array = decode_array({image[0]: image[1]}, 3)
        return array[:, :, 0] if array.shape[2] == 1 else array, self.label_of(item)

    def label_of(self, item) -> int | None:
        where, _, cls = item
        try:
            return int(cls) if cls is not None else None
        except ValueError:
            raise PrepareError(f"{where}: cls {cls[:20]!r} is not an integer label") from None


def idx_files(folder: Path, split: str) -> tuple[Path, Path | None]:
    """The images and (if present) labels IDX files of a split in an MNIST-layout folder."""
    prefix = {"train": "train", "test": "t10k"}[split]
    images = sorted(folder.glob(f"{prefix}-images-idx3-ubyte*")) or sorted(folder.glob(f"{prefix}-images.idx3-ubyte*"))
    if not images:
        raise PrepareError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz] file for --split {split}")
    labels = sorted(folder.glob(images[0].name.replace("images", "labels").replace("idx3", "idx1")))
    return images[0], (labels[0] if labels else None)


def open_source(src: str, split: str = "train", labels: str | None = None) -> Source:
    """Recognise SRC (a dataset name, an IDX/image folder, an array file or shards) and open it."""
    if src == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise PrepareError(
                f"fashion-mnist: {FASHION_MNIST_DIR} is missing; install Debian's dataset-fashion-mnist "
                "(apt-get install dataset-fashion-mnist) or pass the folder holding the IDX files"
            )
        images, label_path = idx_files(FASHION_MNIST_DIR, split)
        return IdxSource(images, label_path, FASHION_MNIST_CLASSES, name="fashion-mnist")
    path = Path(src)
    if path.is_file() and path.suffix in (".npy", ".npz"):
        return ArraySource(path, Path(labels) if labels else None)
    if labels is not None:
        raise PrepareError(f"--labels applies to .npy/.npz sources only, not to {src!r}")
    if path.is_file() and "idx3-ubyte" in path.name:
        label_path = path.with_name(path.name.replace("images", "labels").replace("idx3", "idx1"))
        return IdxSource(path, label_path if label_path.is_file() else None, name=path.name.split("-")[0])
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            return ShardSource(src)
        if any(path.glob("*-images*idx3-ubyte*")):
            images, label_path = idx_files(path, split)
            return IdxSource(images, label_path, name=path.name)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")) and any(path.glob("*.tar*")):
            raise PrepareError(
                f"{src}: a folder of shards without {INDEX_NAME}; name them, e.g. {src}/NAME-{{0..9}}.tar"
            )
        return FolderSource(path)
    if re.search(r"\.tar(\.gz)?\b|\{.*\.\..*\}", src) or "," in src or src.startswith(("pipe:", "http")):
        from gandist.data.specs import DataError

        try:
            return ShardSource(src)
        except DataError as e:
            raise PrepareError(str(e).replace("data.shards=", "SRC=")) from None
    raise PrepareError(
        f"SRC {src!r} does not exist or is not a known kind: give fashion-mnist, a folder of images or IDX files, "
        "an .npy/.npz file, or shards (.tar, brace pattern, folder with index.json)"
    )


# ----------------------------------------------------------------------------------------------
# IDX (MNIST layout)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST layout, optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} values")
    return array.reshape(shape)


def iter_idx(
    images_path: str | Path, labels_path: str | Path | None, resolution: int
) -> Iterator[tuple[np.ndarray, int | None]]:
    """(image, label) pairs from MNIST-layout IDX files, resized."""
    images = read_idx(images_path)
    labels = read_idx(labels_path) if labels_path else None
    for i, image in enumerate(images):
        yield resize(image, resolution), (int(labels[i]) if labels is not None else None)


# ----------------------------------------------------------------------------------------------
# Encoding (in worker processes) and writing (in the main process)


@dataclass
class EncodeOptions:
    """How every image is turned into a sample."""

    resolution: int = 32
    channels: int = 1
    fmt: str = "png"
    method: str = "lanczos"
    crop: str = "center"


_WORKER: tuple[Source, EncodeOptions] | None = None


def _init_worker(source: Source, options: EncodeOptions) -> None:
    global _WORKER
    _WORKER = (source, options)
    os.environ["OMP_NUM_THREADS"] = "1"


def encode_item(source: Source, options: EncodeOptions, item: object) -> tuple[bytes | None, int | None, str | None]:
    """(encoded image, label, None) or (None, None, why it was skipped) for one source item."""
    try:
        image, label = source.load(item)
        if image.ndim == 3 and image.shape[2] == 4:
            image = image[:, :, :3]
        if options.channels == 1 and image.ndim == 3 and image.shape[2] == 3:
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).convert("L"))
        elif image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        image = resize(image, options.resolution, options.method, options.crop)
        if options.channels == 3 and image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return encode_image(image, options.fmt), label, None
    except Exception as e:  # noqa: BLE001 - one unreadable source image is skipped and reported, not fatal
        where = item[0] if isinstance(item, tuple) else item
        return None, None, f"{where}: {type(e).__name__}: {str(e)[:200]}"


def _encode_chunk(items: list) -> list:
    source, options = _WORKER
    return [encode_item(source, options, item) for item in items]


def _chunks(items, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _existing_shards(out_dir: Path, name: str) -> list[Path]:
    pattern = re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar(\.gz)?$")
    return sorted(p for p in out_dir.iterdir() if pattern.match(p.name)) if out_dir.is_dir() else []


def prepare(
    source: Source,
    out_dir: str | Path,
    options: EncodeOptions,
    *,
    name: str | None = None,
    shard_size: int = 2000,
    shard_bytes: int = 0,
    compress: bool = False,
    num_workers: int = 1,
    items: list | None = None,
    limit: int = 0,
    per_class: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    overwrite: bool = False,
    meta: dict | None = None,
    progress: bool | None = None,
) -> dict:
    """Encode the source's images into shards in `out_dir`; returns the index written there.

    `items` replaces the source's own list (a chosen subset or order); `limit` keeps the first N;
    `per_class` keeps N of each class (balanced_subset, after `limit`).
    """
    out_dir = Path(out_dir)
    name = name or source.name
    out_dir.mkdir(parents=True, exist_ok=True)
    finish_interrupted_commit(out_dir, name)
    old = _existing_shards(out_dir, name)
    if old and not overwrite:
        raise PrepareError(f"{out_dir} already holds shards named {name}-*: pass --overwrite or choose another OUT_DIR")
    for stale in [*out_dir.glob(f".{name}-*.tmp*"), *out_dir.glob(f".prepare-{name}.tmp*")]:  # crashed runs
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    staging = out_dir / f".prepare-{name}.tmp{os.getpid()}"  # the old dataset stays whole until this one is
    if items is None:
        items = _source_items(source, limit, shuffle, seed, per_class)
    if per_class:
        meta = {**(meta or {}), "per_class": per_class, "subset_seed": seed}
    total = len(items) if isinstance(items, list) else getattr(source, "total", None)
    if limit and total:
        total = min(total, limit)
    bar = tqdm(total=total, unit="img", desc=f"prepare {name}", disable=None if progress is None else not progress)
    skipped: list[str] = []
    try:
        with _encoded(source, options, items, num_workers) as results:
            with ShardWriter(staging, name, shard_size, shard_bytes, compress) as writer:
                for chunk in results:
                    _write_chunk(writer, chunk, options.fmt, skipped, bar)
        if writer.count == 0:
            raise PrepareError(f"{source.description}: no usable image (skipped {len(skipped)}: {skipped[:3]})")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    index = make_index(name, writer, options.fmt, _dataset_info(source, options, compress, skipped, meta))
    write_index(staging, index)
    journal = out_dir / f".{name}.commit.json"
    plan = {"staging": staging.name, "new": [p.name for p in writer.paths], "old": [p.name for p in old]}
    atomic_write_text(journal, json.dumps(plan) + "\n")
    _commit(out_dir, journal)
    return index


def _commit(out_dir: Path, journal: Path) -> None:
    """Move a complete staged dataset into place: its shards, then the old ones away, then its index last.

    Every step can be repeated: an interrupted commit is finished by the next `prepare` in that folder.
    """
    plan = json.loads(journal.read_text())
    staging = out_dir / plan["staging"]
    if staging.is_dir():
        new = plan["new"]
        for shard in new:
            if (staging / shard).is_file():
                os.replace(staging / shard, out_dir / shard)
        for stale in set(plan["old"]) - set(new):  # shards of an earlier, larger set would be taken for this one's
            (out_dir / stale).unlink(missing_ok=True)
        if (staging / INDEX_NAME).is_file():
            os.replace(staging / INDEX_NAME, out_dir / INDEX_NAME)
        shutil.rmtree(staging)
    journal.unlink()


def finish_interrupted_commit(out_dir: Path, name: str) -> None:
    """Complete the commit of a dataset whose staging was complete when its prepare was interrupted."""
    journal = out_dir / f".{name}.commit.json"
    if journal.is_file():
        _commit(out_dir, journal)


def _source_items(source: Source, limit: int, shuffle: bool, seed: int, per_class: int = 0):
    """The source's items, the first `limit` of them, `per_class` of each class, shuffled with `seed` where
    the source allows."""
    items = source.items()
    if limit:
        items = (x for _, x in zip(range(limit), items)) if not isinstance(items, list) else items[:limit]
    if per_class:
        items = balanced_subset(source, list(items), per_class, seed)
    if shuffle and source.shuffle:
        items = list(items)
        random.Random(seed).shuffle(items)
    return items


def balanced_subset(source: Source, items: list, per_class: int, seed: int) -> list:
    """`per_class` items of every class, in the source's order: a class-balanced subset (`--per-class`).

    Each class's items are shuffled with a generator seeded by (seed, class) and the first
    `per_class` kept, so the choice is the same on every machine and smaller subsets of a seed lie
    inside larger ones (60 per class within 600 per class). Every class the source names (or that
    occurs) must have that many images.
    """
    if per_class < 1:
        raise PrepareError(f"--per-class must be positive, got {per_class}")
    by_class: dict[int, list[int]] = {}
    for position, item in enumerate(items):
        label = source.label_of(item)
        if label is None:
            raise PrepareError(
                f"--per-class {per_class}: {source.description} has unlabelled images (the first: {item!r}); "
                "give a labelled source (class sub-folders, IDX labels, --labels, shards with cls)"
            )
        by_class.setdefault(label, []).append(position)
    classes = sorted(set(range(len(source.classes or []))) | set(by_class))
    counts = {c: len(by_class.get(c, [])) for c in classes}
    if min(counts.values()) < per_class:
        short = min(classes, key=counts.get)
        named = source.classes[short] if source.classes and short < len(source.classes) else str(short)
        name = f" ({named})" if named != str(short) else ""
        raise PrepareError(
            f"--per-class {per_class}: class {short}{name} has only {counts[short]} images in {source.description}; "
            f"choose --per-class <= {counts[short]}"
        )
    chosen = []
    for c in classes:
        positions = by_class[c]
        random.Random(f"{seed}:{c}").shuffle(positions)
        chosen += positions[:per_class]
    return [items[position] for position in sorted(chosen)]


@contextlib.contextmanager
def _encoded(source: Source, options: EncodeOptions, items, num_workers: int) -> Iterator[Iterator[list]]:
    """Chunks of (encoded image, label, problem) in the items' order, from `num_workers` processes."""
    if num_workers <= 1:
        _init_worker(source, options)
        yield map(_encode_chunk, _chunks(items, _CHUNK))
        return
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    pool = context.Pool(num_workers, initializer=_init_worker, initargs=(source, options))
    try:
        yield pool.imap(_encode_chunk, _chunks(items, _CHUNK))
    finally:
        pool.terminate()
        pool.join()


def _write_chunk(writer: ShardWriter, chunk: list, fmt: str, skipped: list[str], bar) -> None:
    """Write a chunk's encoded samples; note (and show the first few of) those that could not be read."""
    for data, label, problem in chunk:
        if problem is not None:
            skipped.append(problem)
            if len(skipped) <= 3:
                bar.write(f"gandist prepare: skipped {problem}", file=sys.stderr)
            continue
        files = {fmt: data}
        if label is not None:
            files["cls"] = str(label).encode()
        writer.write(f"{writer.count:08d}", files)
    bar.update(len(chunk))


def _dataset_info(source: Source, options: EncodeOptions, compress: bool, skipped: list[str], meta) -> dict:
    """What index.json says about the images beyond the shard writer's own fields."""
    bad_shards = getattr(source, "bad_shards", [])
    return {
        "resolution": options.resolution,
        "channels": options.channels,
        **({"num_classes": len(source.classes), "classes": source.classes} if source.classes else {}),
        "source": source.description,
        "resize": options.method,
        "crop": options.crop,
        "compressed": compress,
        **({"skipped": len(skipped)} if skipped else {}),
        **({"truncated_source_shards": bad_shards} if bad_shards else {}),
        **(meta or {}),
    }
