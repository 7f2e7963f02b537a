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


def prepare_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise Tim4RecError(f"{path}: the {what} is a file, not a folder") from None
    except NotADirectoryError:
        raise Tim4RecError(f"{path}: cannot create the {what}: a part of the path is a file") from None
    except OSError as error:
        raise Tim4RecError(f"{path}: cannot create the {what}: {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise Tim4RecError(f"{path}: the {what} is not writable")
    return path


def _atomic(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through a temporary file and rename it over ``path``; on any failure ``path`` is untouched."""
    path = Path(path)
    prepare_folder(path.parent, "folder")
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):  # a full disk, a file size limit, a lost permission
            raise Tim4RecError(f"{path}: cannot write: {error.strerror or error}; the previous file is kept") from None
        if isinstance(error, RuntimeError) and "write" in str(error).lower():  # torch.save's stream writer
            raise Tim4RecError(
                f"{path}: cannot write (is the disk full?): {str(error).splitlines()[0]}; the previous file is kept"
            ) from None
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
    if path.is_dir():
        raise Tim4RecError(f"{path}: a folder, not a {what}")
    if not path.is_file():
        raise Tim4RecError(f"{path}: no such {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only met something other than tensors and plain data
        raise Tim4RecError(
            f"{path}: not a readable {what}: refused to load anything but tensors and plain data "
            "(tim4rec never runs code from a file)"
        ) from None
    except Exception as error:  # torch raises many types for a damaged file
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise Tim4RecError(f"{path}: not a readable {what} ({type(error).__name__}: {first})") from None
