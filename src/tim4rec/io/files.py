"""Atomic writes and safe loading.

Writes: a crash or Ctrl-C never leaves a half-written checkpoint or results file. Each file is
written to a temporary name in the same folder, flushed to disk, then renamed over the old one
(``os.replace`` is atomic on POSIX and Windows).

Loads: :func:`load_torch_file` reads with ``torch.load(weights_only=True)``, which accepts tensors
and plain data (dicts, lists, numbers, strings) and refuses anything else, so a crafted file
cannot run code. Every problem is a :class:`~tim4rec.errors.Tim4RecError` naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from tim4rec.errors import Tim4RecError


def _atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic(Path(path), lambda handle: torch.save(obj, handle))


def write_json_atomic(obj: Any, path: str | Path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    _atomic(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` onto the CPU; a clear error for a missing, unreadable or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise Tim4RecError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise Tim4RecError(
                f"{path}: refused to load: the file holds objects other than tensors and plain data "
                "(tim4rec never runs code from a file; was it written by another program?)"
            ) from None
        raise Tim4RecError(f"{path}: not a readable {what} ({error})") from None
    except Exception as error:  # torch raises many types for a damaged file
        raise Tim4RecError(f"{path}: not a readable {what} ({type(error).__name__}: {error})") from None
