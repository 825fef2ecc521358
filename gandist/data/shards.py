"""The shard format: tar files of samples `<key>.<ext>` (image) and `<key>.cls` (label), plus `index.json`.

Writing: each shard is written to a temporary name in the same folder and renamed when complete, so
a crash never leaves a half-written shard under a real name; the JSON index is written last, so a
folder with an index holds a complete dataset. Reading: `iter_tar` is a small tar parser that is
several times faster per member than `tarfile`'s stream mode (the per-sample Python overhead decides
whether a loader worker keeps up with a GPU, see benchmarks/data_speed.py) and reports a truncated
or corrupt archive as `TruncatedShard` instead of stopping the run.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from gandist.data.images import encode_image
from gandist.files import AtomicFile, atomic_write_text

INDEX_NAME = "index.json"


class TruncatedShard(OSError):
    """A tar archive ends in the middle of a member or holds a corrupt header."""


# ----------------------------------------------------------------------------------------------
# Writing


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards: same input, same bytes
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes samples into `out_dir/name-%06d.tar[.gz]` (numbered from `first_shard`), starting a new shard
    every `shard_size` samples or before `shard_bytes` would be exceeded (whichever comes first; 0 disables a
    limit).

    Shards are written under a temporary name and renamed when complete; `abort()` (or an exception
    inside `with`) removes the unfinished one.
    """

    def __init__(
        self,
        out_dir: str | Path,
        name: str,
        shard_size: int = 2000,
        shard_bytes: int = 0,
        compress: bool = False,
        first_shard: int = 0,
    ):
        if shard_size < 0 or shard_bytes < 0 or (shard_size == 0 and shard_bytes == 0):
            raise ValueError(f"need a positive shard_size or shard_bytes, got {shard_size} and {shard_bytes}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.shard_size, self.shard_bytes, self.compress = name, shard_size, shard_bytes, compress
        self.first_shard = first_shard
        self.paths: list[Path] = []
        self.shard_counts: list[int] = []
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._out: AtomicFile | None = None
        self._in_shard = 0
        self._bytes = 0

    def _open(self) -> None:
        suffix = ".tar.gz" if self.compress else ".tar"
        self.paths.append(self.out_dir / f"{self.name}-{self.first_shard + len(self.paths):06d}{suffix}")
        self._out = AtomicFile(self.paths[-1])
        self._file = self._out.file
        # mtime=0 and no file name in the gzip header: the same samples give the same bytes
        self._gz = (
            gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=self._file, mtime=0)
            if self.compress
            else None
        )
        self._tar = tarfile.open(fileobj=self._gz or self._file, mode="w")
        self._in_shard, self._bytes = 0, 0

    def _close_files(self) -> None:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        self._file.close()
        self._tar = None

    def _finish(self) -> None:
        if self._tar is not None:
            self._close_files()
            self._out.commit()
            self.shard_counts.append(self._in_shard)

    def write(self, key: str, files: dict[str, bytes]) -> None:
        """Add one sample: `files` maps extensions (png, cls, ...) to their bytes."""
        size = sum(512 + (len(d) + 511) // 512 * 512 for d in files.values())
        full = self._tar is not None and (
            (self.shard_size and self._in_shard >= self.shard_size)
            or (self.shard_bytes and self._in_shard > 0 and self._bytes + size > self.shard_bytes)
        )
        if full:
            self._finish()
        if self._tar is None:
            self._open()
        for ext, data in files.items():
            _add(self._tar, f"{key}.{ext}", data)
        self._in_shard += 1
        self._bytes += size
        self.count += 1

    def close(self) -> list[Path]:
        """Complete the last shard; returns all shard paths."""
        self._finish()
        return self.paths

    def abort(self) -> None:
        """Drop the unfinished shard (complete ones stay)."""
        if self._tar is not None:
            self._close_files()
            self.paths.pop()
            self._out.discard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_index(out_dir: str | Path, index: dict) -> Path:
    """Write `out_dir/index.json` atomically."""
    return atomic_write_text(Path(out_dir) / INDEX_NAME, json.dumps(index, indent=2) + "\n")


def write_shards(
    samples: Iterable[tuple[np.ndarray, int | None]],
    out_dir: str | Path,
    name: str,
    shard_size: int = 2000,
    fmt: str = "png",
    compress: bool = False,
    meta: dict | None = None,
    shard_bytes: int = 0,
) -> list[Path]:
    """Write (image, label-or-None) pairs as shards `out_dir/name-%06d.tar[.gz]` plus `index.json`.

    Returns the shard paths. `meta` (resolution, channels, classes, ...) goes into the index.
    """
    with ShardWriter(out_dir, name, shard_size, shard_bytes, compress) as writer:
        for image, label in samples:
            writer.write(f"{writer.count:08d}", sample_files(image, label, fmt))
    write_index(out_dir, make_index(name, writer, fmt, meta))
    return writer.paths


def sample_files(image: np.ndarray, label: int | None, fmt: str) -> dict[str, bytes]:
    """The files of one sample: the image encoded as `fmt`, and its class as text if it has one."""
    files = {fmt: encode_image(image, fmt)}
    if label is not None:
        files["cls"] = str(int(label)).encode()
    return files


def make_index(name: str, writer: ShardWriter, fmt: str, meta: dict | None = None) -> dict:
    """The index of a finished writer: sample count, format, shards (with their sample counts), meta."""
    return {
        "name": name,
        "num_samples": writer.count,
        "format": fmt,
        "shards": [p.name for p in writer.paths],
        "shard_samples": writer.shard_counts,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(meta or {}),
    }


# ----------------------------------------------------------------------------------------------
# Reading


class _Chunked:
    """Exact-size reads from a stream, fetched in large chunks (pipes and gzip are slow per call)."""

    def __init__(self, stream, chunk: int = 1 << 20):
        self.stream, self.chunk = stream, chunk
        self.buf, self.pos = b"", 0

    def read(self, n: int) -> bytes:
        end = self.pos + n
        if end <= len(self.buf):
            out = self.buf[self.pos : end]
            self.pos = end
            return out
        parts = [self.buf[self.pos :]]
        have = len(parts[0])
        while have < n:
            try:
                data = self.stream.read(max(self.chunk, n - have))
            except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a cut or damaged .tar.gz
                raise TruncatedShard(f"corrupt or truncated gzip stream: {str(e)[:200]}") from None
            if not data:
                break
            parts.append(data)
            have += len(data)
        self.buf = b"".join(parts)
        out = self.buf[:n]
        self.pos = len(out)
        return out


def _octal(field: bytes, url: str) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes >= 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TruncatedShard(f"{url}: corrupt tar header (number field {field!r})") from None


def iter_tar(stream, url: str = "<stream>") -> Iterator[tuple[str, bytes]]:
    """(member name, data) of the regular files of a tar stream, in order.

    Raises TruncatedShard where the archive is cut short or a header is corrupt; what came before
    has been yielded. gzip streams are recognised by their magic bytes.
    """
    source = _Chunked(stream)
    if source.read(2) == b"\x1f\x8b":  # everything read so far goes back in front of the gzip stream
        source = _Chunked(gzip.GzipFile(fileobj=_Prepend(source.buf, stream)))
    else:
        source.pos = 0
    long_name = None
    while True:
        header = source.read(512)
        if not header:  # tarfile tolerates this, but every tar writer ends with the marker: a cut shard
            raise TruncatedShard(f"{url}: ends without the end-of-archive marker")
        if len(header) < 512:
            raise TruncatedShard(f"{url}: truncated tar header")
        if header[0] == 0 and header.count(0) == 512:
            return  # end-of-archive marker
        try:  # octal digits padded with NULs or spaces (the usual case, inlined: this runs per member)
            stored, size = int(header[148:156].strip(b" \0"), 8), int(header[124:136].strip(b" \0"), 8)
        except ValueError:  # base-256 sizes, empty or corrupt fields
            stored, size = _octal(header[148:156], url), _octal(header[124:136], url)
        if stored != sum(header) - sum(header[148:156]) + 256:  # the checksum field counts as 8 spaces
            raise TruncatedShard(f"{url}: corrupt tar header (checksum mismatch)")
        padded = size + (-size % 512)
        data = source.read(padded)  # member and padding in one read: calls cost more than the copy
        if len(data) < padded:
            raise TruncatedShard(f"{url}: truncated tar member ({len(data)} of {padded} bytes)")
        if padded != size:
            data = data[:size]
        kind = header[156:157]
        if kind == b"L":  # GNU long name: applies to the next member
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
            continue
        if kind == b"x":  # pax header: only the path matters here
            for line in data.decode("utf-8", "replace").splitlines():
                _, _, record = line.partition(" ")
                if record.startswith("path="):
                    long_name = record[5:]
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:262] == b"ustar" and header[345] != 0:
                name = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
        yield name, data


class _Prepend:
    """A stream with some bytes already read put back in front."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out


def split_name(name: str) -> tuple[str, str]:
    """'dir/abc.seg.png' -> ('dir/abc', 'seg.png'): the sample key and its (lower-case) extension.

    The same rule as webdataset: the key ends at the first dot of the file name.
    """
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def group_samples(members: Iterable[tuple[str, bytes]], url: str) -> Iterator[dict]:
    """Group consecutive tar members with the same key into samples {'__key__', '__url__', ext: bytes}."""
    sample: dict | None = None
    for name, data in members:
        key, ext = split_name(name)
        if not ext or key.startswith("__"):
            continue
        if sample is None or sample["__key__"] != key:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        sample[ext] = data
    if sample is not None:
        yield sample
