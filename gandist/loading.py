"""Reading files that may come from elsewhere (checkpoints, exported generators) without running code from them.

Python's pickle runs whatever a file tells it to. Every torch file gandist reads is loaded with
`weights_only=True`, which accepts plain data only (tensors, numbers, strings, lists, dicts) and refuses
anything else before it runs. `torch.export.load` unpickles some payloads itself (tensor subclasses,
opaque constants) without that guard: `plain_unpickling()` puts it back for the duration of such a load.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class UnsafeFile(ValueError):
    """A file holds more than plain data: loading it could run code, so it is refused."""


def _what(error: BaseException) -> str:
    text = str(error)
    return text.split("GLOBAL ", 1)[1].split(" ", 1)[0] if "GLOBAL " in text else "pickled objects"


def load_plain(file: str | Path, safe_types: tuple = (), mmap: bool = False) -> Any:
    """torch.load of plain data (weights_only); `safe_types` allows a few known data classes by name; `mmap` reads
    tensors from disk when touched.

    Raises UnsafeFile for a file that holds anything else (it is never unpickled); other errors (a damaged
    file) pass through.
    """
    try:
        with torch.serialization.safe_globals(list(safe_types)):
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise UnsafeFile(
            f"{file} holds more than plain tensors, numbers and strings ({_what(e)}): refused, since loading it "
            "could run code"
        ) from None


@contextlib.contextmanager
def plain_unpickling() -> Iterator[None]:
    """While it lasts, torch.load is weights_only whatever its caller asks, and bare pickle.loads refuses.

    For loaders that unpickle parts of a file themselves (torch.export.load): a payload that is not plain
    data raises pickle.UnpicklingError instead of running. Not thread-safe (it swaps module attributes).
    """

    def refuse(*_args, **_kwargs):
        raise pickle.UnpicklingError("refused: a pickled object that is not plain data")

    original_load, original_loads = torch.load, pickle.loads
    original_obj = getattr(torch._C, "_pickle_load_obj", None)

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    torch.load, pickle.loads = load, refuse
    if original_obj is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = original_load, original_loads
        if original_obj is not None:
            torch._C._pickle_load_obj = original_obj


def load_exported(path: str | Path, **kwargs) -> torch.export.ExportedProgram:
    """torch.export.load with plain unpickling only; UnsafeFile for an archive that would run code."""
    try:
        with plain_unpickling():
            return torch.export.load(str(path), **kwargs)
    except pickle.UnpicklingError as e:
        raise UnsafeFile(
            f"{path} holds pickled objects that are not plain data ({_what(e)}): refused, since loading it "
            "could run code"
        ) from None
