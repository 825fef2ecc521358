"""Read an offline W&B run back (its `run-<id>.wandb` transaction log) without network or account.

The file is W&B's LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks
of records, each with a 7-byte header (CRC, length, type: full / first / middle / last) and a
protobuf `Record` payload.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

_BLOCK = 32768


def _payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, out, partial = 7, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - (pos % _BLOCK)
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            partial = payload
        elif kind == 3:
            partial += payload
        elif kind == 4:
            out.append(partial + payload)
            partial = b""
    return out


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)


def read_offline_run(run_folder: Path) -> OfflineRun:
    """Run id, display name, config and history rows of an offline run folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = list(Path(run_folder).glob("run-*.wandb"))
    run = OfflineRun()
    for payload in _payloads(log):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name = record.run.run_id, record.run.display_name
            run.config.update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            run.config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                if item.key:
                    row[item.key] = json.loads(item.value_json)
                else:  # a media value is flattened into (key, field) pairs
                    *path, leaf = item.nested_key
                    node = row
                    for part in path:
                        node = node.setdefault(part, {})
                    node[leaf] = json.loads(item.value_json)
            run.history.append(row)
    return run
