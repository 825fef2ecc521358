"""Files that are never half-written: write to a hidden temporary name beside the target, then rename.

A reader sees either the old file or the whole new one, never a part: a crash, a kill or a full disk
in the middle of a write leaves the temporary file (removed on the error path, or ignored and cleaned
up later by its owner) and the old target untouched. `durable=True` also flushes the data and the
folder entry to the disk before returning (checkpoints); the other writers (grids, indexes, exports)
only need the rename to be atomic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_path(path: Path) -> Path:
    """The hidden temporary name a write of `path` goes to: same folder (rename stays atomic), same suffix
    (writers such as torch.export and PIL choose the format from it), this process's id (no two writers clash)."""
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """An open binary file that replaces `path` on commit() and disappears on discard().

    For writers that stream into a file over a while (shards); atomic_write is the one-call form.
    """

    def __init__(self, path: str | Path, durable: bool = False):
        self.path = Path(path)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_path(self.path)
        self.file: BinaryIO = open(self.tmp, "wb")

    def commit(self) -> Path:
        """Close the file and move it into place."""
        if self.durable:
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        if self.durable:
            fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Close and remove the temporary file; the target stays as it was."""
        self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path: str | Path, write: Callable[[Path], object], durable: bool = False) -> Path:
    """Call `write(tmp)` to create the temporary file (for writers that want a path: torch.export, PIL),
    then move it into place; on any error the temporary file is removed and the error passes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> Path:
    """Write bytes atomically."""
    with AtomicFile(path, durable) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode(), durable)
