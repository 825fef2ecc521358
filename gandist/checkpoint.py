"""Checkpoints that are never half-written: `run_dir/checkpoints/step-<step>/`.

Writing: every rank writes into a hidden temporary folder; rank 0 then flushes, writes a
`COMPLETE` marker and renames the folder to its final name. Only folders with the marker are ever
loaded; older complete ones beyond `keep` are deleted only after the new one is complete.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MARKER = "COMPLETE"
_NAME = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    with path.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and (p / MARKER).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    shared_state: Callable[[], dict],
    rank_state: dict,
    rank: int,
    barrier: Callable[[], None],
    keep: int = 3,
    collective_save: Callable[[Path], None] | None = None,
) -> Path:
    """Collectively write checkpoint `step`: rank 0 writes `shared_state()`, every rank its `rank_state`.

    `collective_save(folder)`, if given, is called on every rank with the temporary folder (sharded
    states such as DeepSpeed's `ds_G/`, `ds_D/`), before the COMPLETE marker.
    Every rank must call this. Returns the final folder.
    """
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step:09d}"
    tmp = folder / f".step-{step:09d}.tmp"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    _save_file(rank_state, tmp / f"rank-{rank:05d}.pt")
    if collective_save is not None:
        collective_save(tmp)
    if rank == 0:
        _save_file(shared_state(), tmp / "state.pt")
    barrier()
    if rank == 0:
        (tmp / MARKER).write_text(f"step {step}\n")
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: str | Path, rank: int = 0) -> tuple[dict, dict | None]:
    """Load (shared state, this rank's state or None) from a complete checkpoint folder."""
    path = Path(path)
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    shared = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    rank_file = path / f"rank-{rank:05d}.pt"
    rank_state = torch.load(rank_file, map_location="cpu", weights_only=False) if rank_file.is_file() else None
    return shared, rank_state


def clean_partial(run_dir: str | Path) -> None:
    """Remove temporary folders left by an interrupted save."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in folder.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
