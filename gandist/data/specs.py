"""Shard specs: what a user writes in data.shards (or metrics.reference), turned into shard URLs, and
opening one shard.

    path | brace pattern dir/name-{000000..000099}.tar | folder with index.json | pipe:CMD | http(s)://
    | file: | comma list of these  ->  a list of URLs; empty: the embedded Fashion-MNIST sample

A `pipe:` spec runs its command in a shell: configs and shard lists must be trusted.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import braceexpand
import psutil
from webdataset.gopen import gopen, gopen_schemes

from gandist.config import ConfigError
from gandist.data.images import BadSample, decode_array
from gandist.data.shards import INDEX_NAME, TruncatedShard, group_samples, iter_tar

EMBEDDED_DIR = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist"
_URL = re.compile(r"^([a-z][a-z0-9+.-]*):")


class DataError(ConfigError):
    """A data problem (missing shards, wrong image size, too many bad samples), naming the spec or shard."""


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


class ShardStalled(DataError):
    """A shard delivered no bytes for data.timeout_s seconds."""


class ReadsStopped(Exception):
    """The process was asked to stop (SIGTERM in a loader worker) while a shard read was waiting."""


STOP_READS = threading.Event()  # set in a loader worker by SIGTERM: a waiting read gives up (stream.py)


class TimedStream:
    """A remote stream (pipe:, http) read by a helper thread, so that a wait for data has a bound.

    read() returns what arrived, waiting at most `timeout_s` (0: forever) for the next bytes; then it kills
    the shard's process and raises ShardStalled naming the shard. The wait also ends when STOP_READS is set.
    """

    def __init__(self, stream, url: str, timeout_s: float, source: str = ""):
        self.stream, self.url, self.timeout_s, self.source = stream, url, timeout_s, source or url
        self._chunks: queue.Queue = queue.Queue(maxsize=4)
        self._left = b""
        self._done = self._closed = False
        threading.Thread(target=self._pump, daemon=True, name=f"read {url}"[:60]).start()

    def _pump(self) -> None:
        try:
            while not self._closed:
                data = self.stream.read(1 << 20)
                self._hand_over(data)
                if not data:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the reading thread, which raises it
            self._hand_over(e)

    def _hand_over(self, item) -> None:
        while not self._closed:
            try:
                self._chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                pass

    def _next_chunk(self) -> bytes:
        waited = 0.0
        while True:
            if STOP_READS.is_set():
                self.kill()
                raise ReadsStopped(self.url)
            try:
                item = self._chunks.get(timeout=0.5)
                break
            except queue.Empty:
                waited += 0.5
                if self.timeout_s and waited >= self.timeout_s:
                    self.kill()
                    raise ShardStalled(
                        f"data.shards={self.source!r}: shard {self.url} delivered no data for {self.timeout_s:g} s "
                        "(data.timeout_s): check that it is reachable, or raise data.timeout_s"
                    ) from None
        if isinstance(item, BaseException):
            raise item
        return item

    def read(self, n: int = -1) -> bytes:
        """Up to n bytes (fewer at the end of the stream); b"" at the end."""
        if not self._left and not self._done:
            self._left = self._next_chunk()
            self._done = not self._left
        if n is None or n < 0:
            parts = [self._left]
            while not self._done:
                chunk = self._next_chunk()
                self._done = not chunk
                parts.append(chunk)
            self._left = b""
            return b"".join(parts)
        out, self._left = self._left[:n], self._left[n:]
        return out

    def kill(self) -> None:
        """End the shard's process and what it started (a pipe: command's shell and its children, curl), so
        that nothing holds the pipe open and no reader waits on it."""
        process = getattr(self.stream, "proc", None)
        if process is None or process.poll() is not None:
            return
        try:
            tree = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for child in [process, *tree]:
            with contextlib.suppress(psutil.Error, OSError):
                child.kill()

    def close(self) -> None:
        """Close the underlying stream (a pipe: stream raises here if its command failed); a stream closed
        before its end has its processes killed instead (its reader thread then ends on its own)."""
        self._closed = True
        if self._done:
            self.stream.close()
        else:
            self.kill()


def open_shard(url: str, timeout_s: float = 0.0, source: str = "") -> BinaryIO:
    """Open a shard for reading: local paths directly, other URLs through webdataset's gopen, with their
    reads bounded by `timeout_s` (0: no bound; TimedStream)."""
    if _is_local(url):
        return open(_local_path(url), "rb", buffering=0)  # iter_tar reads in large chunks itself
    return TimedStream(gopen(url, "rb"), url, timeout_s, source)


def iter_shard(url: str, timeout_s: float = 0.0, source: str = "") -> Iterator[dict]:
    """The samples of one shard; raises TruncatedShard or OSError after the last good one, ShardStalled if it
    delivers nothing for `timeout_s`."""
    stream = open_shard(url, timeout_s, source)
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


def check_dataset(urls: list[str], resolution: int, source: str, timeout_s: float = 0.0) -> None:
    """Fail fast if the shards' image size differs from model.resolution.

    Uses the shards' `index.json` when there is one, else decodes the first sample of the first shard
    (waiting at most `timeout_s` for its bytes).
    """
    found = read_index(urls)
    if found is not None:
        index, path = found
        size, where = index.get("resolution"), str(path)
    else:
        size, where = None, urls[0]
        samples = iter_shard(urls[0], timeout_s, source)
        try:
            size = decode_array(next(samples), 1).shape[0]
        except StopIteration:
            pass
        except (BadSample, TruncatedShard):
            return  # a damaged first sample or shard: the loader skips and counts it
        except OSError as e:  # cannot even be opened (a remote shard, a failing pipe: command)
            raise DataError(f"data.shards={source!r}: cannot read {urls[0]}: {str(e)[:300]}") from None
        finally:
            samples.close()
    if size is not None and int(size) != resolution:
        raise DataError(
            f"data.shards={source!r}: {where} holds {size}x{size} px images but model.resolution={resolution}: "
            f"set model.resolution={size}, or re-create the shards with "
            f"`gandist prepare SRC OUT --resolution {resolution}`"
        )
