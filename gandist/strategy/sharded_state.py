"""ZeRO-3 weights in a checkpoint without gathering them: every rank writes its own partitions, readers stream.

    checkpoints/step-N/nets-rank-00000.pt ... nets-rank-<N-1>.pt      one file per rank, written by that rank

Each file holds, for every net (G, D, G_ema), this rank's partition of each parameter as ZeRO-3 lays it
out (rank r owns elements [r * p, (r + 1) * p) of the flattened parameter padded to N * p, p =
ceil(numel / N)), and the buffers. Nothing is gathered to write it: each rank saves what it holds (the
partitions are views of one flat buffer, saved once). Plain tensors, lists, strings and numbers:
gandist.loading.load_plain (weights_only) reads it.

Readers open the files memory-mapped and assemble one parameter at a time, so the largest extra memory
is one parameter: `consolidate` gives a full state dict (export, sampling: one process), `partition`
gives a rank's partition of one parameter at another world size (resuming G_ema on N' ranks).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from gandist.loading import load_plain
from gandist.strategy.ema import ShardedEma

FORMAT = "gandist-zero3-partitions/1"
PATTERN = "nets-rank-{rank:05d}.pt"
_NAME = re.compile(r"^nets-rank-(\d{5})\.pt$")


def rank_file(folder: str | Path, rank: int) -> Path:
    """The file rank `rank` writes in a checkpoint folder."""
    return Path(folder) / PATTERN.format(rank=rank)


def net_entry(named: list[tuple[str, torch.Tensor]], shapes: list[list[int]], buffers: dict[str, torch.Tensor]) -> dict:
    """One net's part of a rank file: (name, this rank's partition) per parameter, full shapes, buffers."""
    return {
        "names": [name for name, _ in named],
        "shapes": [list(s) for s in shapes],
        "tensors": [t.detach() for _, t in named],
        "buffers": {k: v.detach() for k, v in buffers.items()},
    }


def net_entry_of(module: nn.Module) -> dict:
    """A ZeRO-3 module's entry: the partition (`ds_tensor`) this rank holds of each parameter."""
    named = [(name, p.ds_tensor) for name, p in module.named_parameters()]
    return net_entry(named, [list(p.ds_shape) for p in module.parameters()], dict(module.named_buffers()))


def ema_entry(ema: ShardedEma) -> dict:
    """A sharded G_ema's entry (its source module gives names and shapes)."""
    names = [name for name, _ in ema.source.named_buffers()]
    shapes = [list(p.ds_shape) for p in ema.params]
    return net_entry(list(ema.named_tensors()), shapes, dict(zip(names, ema.buffers)))


def load_ema(ema: ShardedEma, folder: str | Path, shared: dict, name: str, rank: int, world_size: int) -> None:
    """Restore a sharded G_ema: from this rank's file at the world size that wrote it, re-partitioned one
    parameter at a time at another, or partitioned from a full state dict in state.pt (older checkpoints)."""
    if name in shared:
        full, partitioned = shared[name], False
        values = (full[n] for n, _ in ema.named_tensors())
    elif shared.get("partitioned", {}).get("world_size") == world_size:
        entry = _load(rank_file(folder, rank))["nets"][name]
        values, full, partitioned = entry["tensors"], entry["buffers"], True
    else:
        values = (t for _, t in full_parameters(folder, name))  # one full parameter at a time
        full, partitioned = _load(rank_files(folder)[0])["nets"][name]["buffers"], False
    with torch.no_grad():
        for (_, tensor), value in zip(ema.named_tensors(), values):
            tensor.copy_(value if partitioned else partition(value, rank, world_size))
        for (bname, _), buffer in zip(ema.source.named_buffers(), ema.buffers):
            buffer.copy_(full[bname])


def rank_state(rank: int, world_size: int, nets: dict[str, dict]) -> dict:
    """What one rank writes: its entries of every net."""
    return {"format": FORMAT, "rank": rank, "world_size": world_size, "nets": nets}


def rank_files(folder: str | Path) -> list[Path]:
    """Every rank's file in a checkpoint folder, in rank order; CheckpointShardsError if one is missing."""
    found = sorted(p for p in Path(folder).iterdir() if _NAME.match(p.name)) if Path(folder).is_dir() else []
    if not found:
        raise ShardsError(f"{folder} holds no {PATTERN.format(rank=0)} (ZeRO-3 partitions): not a ZeRO-3 checkpoint")
    world = _load(found[0])["world_size"]
    if len(found) != world:
        raise ShardsError(
            f"{folder} holds {len(found)} partition file(s) but they were written by {world} ranks: "
            "copy the whole checkpoint folder"
        )
    return found


class ShardsError(RuntimeError):
    """A ZeRO-3 checkpoint's partition files are missing or do not fit; the message names the folder."""


def _load(path: Path) -> dict:
    """A rank file, memory-mapped: tensors are read from disk when touched."""
    return load_plain(path, mmap=True)


def full_parameters(folder: str | Path, net: str) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of every parameter of `net`, assembled one at a time from all ranks' files."""
    files = [_load(path) for path in rank_files(folder)]
    entries = [f["nets"].get(net) for f in files]
    if any(e is None for e in entries):
        raise ShardsError(f"{folder}: no partitions of {net!r} (nets: {', '.join(files[0]['nets'])})")
    first = entries[0]
    for i, (name, shape) in enumerate(zip(first["names"], first["shapes"])):
        numel = math.prod(shape)
        flat = torch.cat([e["tensors"][i].reshape(-1) for e in entries])
        yield name, flat[:numel].reshape(shape).clone()


def consolidate(folder: str | Path, net: str) -> dict[str, torch.Tensor]:
    """The full state dict of `net` (parameters and buffers) from a ZeRO-3 checkpoint's partition files."""
    state = dict(full_parameters(folder, net))
    buffers = _load(rank_files(folder)[0])["nets"][net]["buffers"]
    state.update({k: v.clone() for k, v in buffers.items()})
    return state


def partition(full: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank `rank`'s partition of a parameter on `world_size` ranks, as ZeRO-3 lays it out (zero padded)."""
    size = math.ceil(full.numel() / world_size)
    out = full.new_zeros(size)
    flat = full.reshape(-1)[rank * size : (rank + 1) * size]
    out[: flat.numel()] = flat
    return out
