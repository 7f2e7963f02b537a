"""``checkpoint.pt``: everything needed to continue a run, as tensors and plain data only.

Model and optimiser state dicts, the loop's state, the config, the dataset's item ids and the
prepared data's fingerprint (a resumed run refuses data whose ids, events or times changed; a
checkpoint without a fingerprint still resumes) and the three RNG states. NumPy's and Python's RNG
states are stored as tensors and lists so that the file loads with ``weights_only=True``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tim4rec.errors import Tim4RecError
from tim4rec.io import load_torch_file, save_atomic
from tim4rec.io.files import check_finite

FORMAT = "tim4rec-checkpoint-2"


def rng_state() -> dict[str, Any]:
    """The torch (CPU and, where initialised, CUDA), NumPy and Python RNG states as tensors and plain data."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))


def save_checkpoint(path: Path, **contents: Any) -> None:
    """Write the run's state atomically (``contents``: config, model_state, optimizer_state, state, item_tokens,
    data_fingerprint, and under torchrun ``rng_by_rank``); ``rng`` is this process's RNG state."""
    save_atomic({"format": FORMAT, "rng": rng_state(), **contents}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read ``checkpoint.pt`` safely; a clear error for anything that is not one."""
    checkpoint = load_torch_file(path, "checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise Tim4RecError(f"{path}: not a tim4rec checkpoint (checkpoint.pt) of this version")
    if isinstance(checkpoint.get("model_state"), dict):  # a run resumed from NaN weights would only diverge
        check_finite(checkpoint["model_state"], path)
    return checkpoint


def data_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """How the prepared data of ``current`` differ from ``saved`` (both
    :meth:`~tim4rec.data.preprocess.Interactions.fingerprint`), in words; None when they are the same."""
    if saved.get("sha256") == current["sha256"]:
        return None
    keys = ("users", "items", "interactions")
    same = [saved.get(key) == current[key] for key in keys]
    parts = [
        f"{current[key]:,} {key} same" if alike else f"{key} {_count(saved.get(key))} -> {current[key]:,}"
        for key, alike in zip(keys, same)
    ]
    if all(same):
        parts.append("but the events or their times changed")
    return ", ".join(parts)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else repr(value)
