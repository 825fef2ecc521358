"""Checkpoints that are never half-written: `run_dir/checkpoints/step-<step>/`, and the one way to find and read them.

Writing: every rank writes into a hidden temporary folder; rank 0 then flushes, writes a
`COMPLETE` marker and renames the folder to its final name. Only folders with the marker are ever
loaded; older complete ones beyond `keep` are deleted only after the new one is complete.

Finding: `find_checkpoint` turns what a user points at (a run folder, a checkpoint folder, a
`state.pt`) into one complete checkpoint folder, for resuming, sampling, exporting and evaluating alike.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gandist.files import fsync_dir
from gandist.loading import UnsafeFile, load_plain

MARKER = "COMPLETE"
STATE_FILE = "state.pt"
_NEARLY_FULL = 16 << 20  # bytes free below which a failed write is put down to a full disk
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


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def find_checkpoint(path: str | Path) -> Path:
    """The complete checkpoint folder meant by `path`: a run folder (its newest intact checkpoint: damaged ones
    are named and passed over), a checkpoint folder, or the `state.pt` inside one. Raises CheckpointError saying
    what was found instead."""
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
    found = latest_intact(path, _warn, [STATE_FILE])
    if found is None and complete_checkpoints(path):
        raise CheckpointError(f"no intact checkpoint in {path}: every complete one is damaged (above)")
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
    gather: Callable[[object], list] | None = None,
    world_size: int = 1,
) -> Path:
    """Collectively write checkpoint `step`: rank 0 writes `shared_state()`, every rank its `rank_state`.

    Every rank must call this. `all_ok(flag)` is a collective AND over ranks: a write that fails
    on any rank (full disk, dead file system) makes every rank raise CheckpointError together
    instead of leaving the others waiting; the temporary folder is removed and older checkpoints
    stay as they were. `collective_save(folder)`, if given, is called on every rank with the
    temporary folder (sharded states such as DeepSpeed's `ds_G/`, `ds_D/`) before the marker.
    The marker lists the SHA-256 of every file (hashed by all ranks, each a share, when `gather`, the
    strategy's gather_objects, is given; else by rank 0): loading verifies them. Older complete
    checkpoints beyond `keep` are deleted, but never one of a later step than this one. Returns the final folder.
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
    hashes: dict[str, str] = {}
    if all_ok(error is None):
        try:
            hashes = _hash_share(tmp, rank if gather else 0, world_size if gather else 1) if gather or rank == 0 else {}
        except OSError as e:
            error = e
        if gather is not None:
            hashes = {k: v for share in gather(hashes) for k, v in share.items()}
    if all_ok(error is None) and rank == 0:
        try:
            manifest = json.dumps({"step": step, "sha256": dict(sorted(hashes.items()))}, indent=1)
            (tmp / MARKER).write_text(f"step {step}\n{manifest}\n")
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
        failed = CheckpointError(
            f"could not write checkpoint {final} ({_cause(error, folder)}); the previous checkpoints are intact"
        )
        failed.collective = True  # type: ignore[attr-defined] - every rank raises it together
        raise failed
    if rank == 0 and keep > 0:
        older = [p for p in complete_checkpoints(run_dir) if checkpoint_step(p) < step]
        for old in older[: max(0, len(older) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_step(folder: Path) -> int:
    """The step of a checkpoint folder `step-<step>`."""
    return int(_NAME.match(folder.name).group(1))


def _files(folder: Path) -> list[str]:
    """Every file of a checkpoint folder but the marker, as sorted relative paths."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 4 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_share(folder: Path, rank: int, world_size: int) -> dict[str, str]:
    """SHA-256 of this rank's share of the folder's files."""
    return {name: file_sha256(folder / name) for name in _files(folder)[rank::world_size]}


def manifest(folder: Path) -> dict[str, str] | None:
    """The file hashes a checkpoint's marker lists, or None for a checkpoint written before they were recorded."""
    lines = (folder / MARKER).read_text().split("\n", 1)
    if len(lines) < 2 or not lines[1].strip():
        return None
    try:
        return dict(json.loads(lines[1])["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {folder}: its {MARKER} marker is damaged ({e})") from None


def verify(folder: Path, names: list[str] | None = None) -> bool:
    """Check files of a complete checkpoint against the hashes its marker lists (all of them if `names` is None).

    Raises CheckpointError naming the first damaged or missing file; False for a checkpoint that lists no hashes
    (written before they were recorded: loaded unverified), True when every file checked out.
    """
    expected = manifest(folder)
    if expected is None:
        return False
    for name in expected if names is None else names:
        path = folder / name
        if name not in expected:
            raise CheckpointError(f"checkpoint {folder}: {name} is not among the files its {MARKER} marker lists")
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder} is damaged: {name} is missing")
        if file_sha256(path) != expected[name]:
            raise CheckpointError(
                f"checkpoint {folder} is damaged: {name} does not match the checksum recorded when it was written"
            )
    return True


def latest_intact(run_dir: str | Path, say: Callable[[str], None], names: list[str] | None = None) -> Path | None:
    """The newest complete checkpoint of a run whose files (`names`, or all) verify; damaged ones are named
    through `say` and passed over."""
    for folder in reversed(complete_checkpoints(run_dir)):
        try:
            verify(folder, names)
            return folder
        except CheckpointError as e:
            say(f"gandist: WARNING {e}; trying the checkpoint before it")
    return None


def _cause(error: BaseException | None, folder: Path) -> str:
    """What went wrong, in words a user can act on (a full disk says so, whatever the writer's message was)."""
    if error is None:
        return "a write failed on another rank"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < _NEARLY_FULL):
        shown = f"{free / 2**20:.1f} MiB free" if free is not None else "full"
        return f"no space left on the device of {folder} ({shown}): free some space or move output_dir"
    if isinstance(error, PermissionError):
        return f"no permission to write in {folder}: {error}"
    return f"{type(error).__name__}: {error}"


def load_checkpoint(path: str | Path, rank: int | None = 0) -> tuple[dict, dict | None]:
    """Load (shared state, this rank's state or None) from a complete checkpoint folder, verified.

    rank None: the shared state only (what sampling, exporting and evaluating need; every checkpoint has it,
    DeepSpeed ones included). Files are checked against the marker's checksums and read as plain data
    (tensors, numbers, strings, lists, dicts): a file holding anything else is refused, never unpickled.
    """
    path = Path(path)
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"{path} is marked complete but has no {STATE_FILE}: it was not written by gandist")
    rank_file = f"rank-{rank:05d}.pt" if rank is not None else None
    own = rank_file is not None and (path / rank_file).is_file()
    verify(path, [STATE_FILE] + ([rank_file] if own else []))
    shared = _read(path / STATE_FILE)
    return shared, _read(path / rank_file) if own else None


def _read(file: Path) -> Any:
    try:
        return load_plain(file)
    except UnsafeFile as e:
        raise CheckpointError(f"{e}. Checkpoints written by gandist hold plain data only: do not use it") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many kinds on damaged files
        raise CheckpointError(f"{file} is damaged and cannot be read ({type(e).__name__}: {e})") from None


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
    """Remove temporary folders left by an interrupted save, and engine states converted for a resume at another
    world size by a job that stopped before it removed them (strategy/universal.py)."""
    from gandist.strategy.universal import SCRATCH

    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in [*folder.glob(".step-*.tmp"), folder / SCRATCH]:
            shutil.rmtree(p, ignore_errors=True)
