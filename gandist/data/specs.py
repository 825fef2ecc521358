"""Shard specs: what a user writes in data.shards (or metrics.reference), turned into shard URLs, and
opening one shard.

    path | brace pattern dir/name-{000000..000099}.tar | folder with index.json | pipe:CMD | http(s)://
    | file: | comma list of these  ->  a list of URLs; empty: the embedded Fashion-MNIST sample

A `pipe:` spec runs its command in a shell: configs and shard lists must be trusted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import braceexpand
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
