"""Atomic writes and safe loading.

Writes: a crash or Ctrl-C never leaves a half-written checkpoint or results file. Each file is
written to a temporary name in the same folder, flushed to disk, then renamed over the old one
(``os.replace`` is atomic on POSIX and Windows).

Loads: :func:`load_torch_file` reads with ``torch.load(weights_only=True)``, which accepts tensors
and plain data (dicts, lists, numbers, strings) and refuses anything else, so a crafted file
cannot run code; :func:`check_finite` refuses weights holding NaN or infinity, with which a model
scores every item NaN and recommends nothing. Every problem is a
:class:`~tim4rec.errors.Tim4RecError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Mapping
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


@contextlib.contextmanager
def output_folder(path: str | Path, what: str = "output folder") -> Iterator[Path]:
    """:func:`prepare_folder` for a ``with`` block that fills the folder. When the block fails (any
    exception, Ctrl-C included), the folders this call created and the block left empty are removed
    again, so a command that fails leaves nothing behind."""
    path = Path(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]  # the deepest first
    try:
        yield prepare_folder(path, what)
    except BaseException:
        for folder in created:
            try:
                folder.rmdir()  # only an empty folder; one that holds a file stays, and so do its parents
            except OSError:
                break
        raise


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
        raise


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically."""
    buffer = io.BytesIO()  # serialised first: a failing file write then raises the OSError that says why
    torch.save(obj, buffer)
    _atomic(Path(path), lambda handle: handle.write(buffer.getbuffer()))


def write_bytes_atomic(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    _atomic(Path(path), lambda handle: handle.write(data))


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


def check_finite(state: Mapping[str, Any], path: str | Path) -> None:
    """Raise a :class:`Tim4RecError` naming ``path`` and the first floating tensor of ``state`` (a state dict)
    that holds NaN or infinity."""
    for name, tensor in state.items():
        floating = isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex())
        if floating and not bool(torch.isfinite(tensor).all()):
            raise Tim4RecError(f"{path}: the weights hold non-finite values (NaN or infinity), first in '{name}'")
