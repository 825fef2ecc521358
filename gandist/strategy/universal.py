"""Resuming a ZeRO run at another world size, through DeepSpeed's universal checkpoint.

An engine's ZeRO-1/2/3 checkpoint holds, per rank, a flat partition of the fp32 master weights and of
Adam's moments, laid out for the world size that wrote it. DeepSpeed's `ds_to_universal` rewrites those
partitions as one folder per parameter (`zero/<parameter>/{fp32,exp_avg,exp_avg_sq,step}.pt`); an engine
whose config says `checkpoint.load_universal` then reads its own slice of each at any world size.

gandist does both steps itself when a ZeRO checkpoint's world size differs from the run's:

    rank 0    ds_to_universal ds_G/state, ds_D/state  ->  <checkpoints>/.universal/step-N/ds_G/state, ...
    all       engine.load_checkpoint from there with load_universal on (only for that call)
    rank 0    removes .universal/

The checkpoint itself is never changed; a conversion cut short leaves only the scratch folder, which
the next attempt clears first. The engine files were checked to hold plain data before they get here
(DeepSpeed's converter reads them with a full unpickler).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from gandist.config import ConfigError

SCRATCH = ".universal"  # under a run's checkpoints/: converted engine states while they are being loaded


def scratch_folder(folder: Path) -> Path:
    """Where the converted engine states of checkpoint `folder` go: under a hidden sibling, `.universal/`."""
    return folder.parent / SCRATCH / folder.name


def convert(folder: Path, names: Iterable[str], tag: str, scratch: Path) -> None:
    """Rewrite each engine's state `folder/ds_<name>/<tag>` in universal form under `scratch` (one process)."""
    shutil.rmtree(scratch, ignore_errors=True)
    for name in names:
        source = folder / f"ds_{name}" / tag
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(source),
            "--output_folder",
            str(scratch / f"ds_{name}" / tag),
            "--inject_missing_state",  # the Megatron-specific record it wants: gandist's nets need none
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
            shutil.rmtree(scratch, ignore_errors=True)
            raise ConfigError(
                f"checkpoint {folder}: DeepSpeed's universal-checkpoint conversion of {source} failed "
                f"({lines[-1]}); resume with the world size that wrote it"
            )


@contextlib.contextmanager
def loading(engines: Iterable) -> Iterator[None]:
    """The engines read universal checkpoints for the duration (DeepSpeed reads the flag from its config)."""
    engines = list(engines)
    before = [engine._config.load_universal_checkpoint for engine in engines]
    for engine in engines:
        engine._config.load_universal_checkpoint = True
    try:
        yield
    finally:
        for engine, flag in zip(engines, before):
            engine._config.load_universal_checkpoint = flag
