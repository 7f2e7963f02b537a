"""Atomic writes: a crash or Ctrl-C never leaves a half-written checkpoint or results file.

Each file is written to a temporary name in the same folder, flushed to disk, then renamed over
the old one (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
