"""Checkpoints that are never half-written: `run_dir/checkpoints/step-<step>/`, and the one way to find and read them.

Writing: every rank writes into a hidden temporary folder; rank 0 then flushes, writes a
`COMPLETE` marker and renames the folder to its final name. Only folders with the marker are ever
loaded; older complete ones beyond `keep` are deleted only after the new one is complete.

Finding: `find_checkpoint` turns what a user points at (a run folder, a checkpoint folder, a
`state.pt`) into one complete checkpoint folder, for resuming, sampling, exporting and evaluating alike.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gandist.files import fsync_dir

MARKER = "COMPLETE"
STATE_FILE = "state.pt"
_NAME = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, written or read; the message names the folder and the cause."""


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


def find_checkpoint(path: str | Path) -> Path:
    """The complete checkpoint folder meant by `path`: a run folder (its newest complete checkpoint), a
    checkpoint folder, or the `state.pt` inside one. Raises CheckpointError saying what was found instead."""
    path = Path(path).resolve()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: pass a run folder (runs/NAME) or a checkpoint folder")
    if path.is_file():
        if path.name != STATE_FILE:
            raise CheckpointError(
                f"{path} is a file but not a checkpoint's {STATE_FILE}: pass a run or checkpoint folder"
            )
        path = path.parent
    if (path / MARKER).is_file():
        return path
    if _NAME.match(path.name) and path.parent.name == "checkpoints":
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {MARKER} marker: its save was interrupted); "
            f"pass the run folder {path.parent.parent} to use its newest complete checkpoint"
        )
    found = latest_checkpoint(path)
    if found is None:
        where = path / "checkpoints"
        partial = sorted(p.name for p in where.glob("*step-*")) if where.is_dir() else []
        detail = f" (only incomplete saves: {', '.join(partial)})" if partial else ""
        raise CheckpointError(
            f"no complete checkpoint in {path}{detail}: expected {where}/step-*/{MARKER}; "
            "train longer or pass another run or checkpoint folder"
        )
    return found


def save_checkpoint(
    run_dir: Path,
    step: int,
    shared_state: Callable[[], dict],
    rank_state: dict,
    rank: int,
    all_ok: Callable[[bool], bool],
    keep: int = 3,
    delay_s: float = 0.0,
    collective_save: Callable[[Path], None] | None = None,
) -> Path:
    """Collectively write checkpoint `step`: rank 0 writes `shared_state()`, every rank its `rank_state`.

    Every rank must call this. `all_ok(flag)` is a collective AND over ranks: a write that fails
    on any rank (full disk, dead file system) makes every rank raise CheckpointError together
    instead of leaving the others waiting; the temporary folder is removed and older checkpoints
    stay as they were. `collective_save(folder)`, if given, is called on every rank with the
    temporary folder (sharded states such as DeepSpeed's `ds_G/`, `ds_D/`) before the marker.
    Returns the final folder.
    """
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"step-{step:09d}"
    tmp = folder / f".step-{step:09d}.tmp"
    error: BaseException | None = None
    if rank == 0:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        except OSError as e:
            error = e
    if all_ok(error is None):
        try:
            if collective_save is not None:  # first: a collective that every rank must reach
                collective_save(tmp)
            _save_file(rank_state, tmp / f"rank-{rank:05d}.pt")
            if rank == 0:
                _save_file(shared_state(), tmp / STATE_FILE)
            if delay_s > 0:
                time.sleep(delay_s)
        except Exception as e:  # noqa: BLE001 - any failure must reach all ranks, then re-raise
            error = e
    else:
        error = error or CheckpointError("another rank could not create the folder")
    if all_ok(error is None) and rank == 0:
        try:
            (tmp / MARKER).write_text(f"step {step}\n")
            fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            fsync_dir(folder)
        except OSError as e:
            error = e
    if not all_ok(error is None):
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        cause = f"{type(error).__name__}: {error}" if error else "a write failed on another rank"
        raise CheckpointError(f"could not write checkpoint {final} ({cause}); the previous checkpoints are intact")
    if rank == 0 and keep > 0:
        for old in complete_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, rank: int | None = 0) -> tuple[dict, dict | None]:
    """Load (shared state, this rank's state or None) from a complete checkpoint folder.

    rank None: the shared state only (what sampling, exporting and evaluating need; every checkpoint has it,
    DeepSpeed ones included).
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is marked complete but has no {STATE_FILE}: it was not written by gandist")
    try:
        shared = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)
        rank_file = path / f"rank-{rank:05d}.pt" if rank is not None else None
        rank_state = (
            torch.load(rank_file, map_location="cpu", weights_only=False)
            if rank_file is not None and rank_file.is_file()
            else None
        )
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on damaged files
        raise CheckpointError(f"checkpoint {path} is damaged and cannot be read ({type(e).__name__}: {e})") from e
    return shared, rank_state


def net_state(path: str | Path, shared: dict, net: str) -> dict:
    """The full state dict of G, D or G_ema of a complete checkpoint: from its state.pt (`shared`), or, for a
    ZeRO-3 checkpoint, assembled one parameter at a time from the ranks' partition files (strategy/sharded_state.py).
    KeyError if the checkpoint holds no such net."""
    if net in shared:
        return shared[net]
    if net in shared.get("partitioned", {}).get("nets", ()):
        from gandist.strategy.sharded_state import consolidate

        return consolidate(path, net)
    raise KeyError(net)


def clean_partial(run_dir: str | Path) -> None:
    """Remove temporary folders left by an interrupted save."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in folder.glob(".step-*.tmp"):
            shutil.rmtree(p, ignore_errors=True)
