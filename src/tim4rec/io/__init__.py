"""Files: atomic writes, safe loading, and saved models (weights + config + id maps).

Used by training, evaluation and serving alike; imports nothing from them. ``import tim4rec.io.files``
(atomic writes, safe loading) imports no models, so the data stage can use it too: the saved-model
names (:mod:`tim4rec.io.saved_model`, which builds models) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tim4rec.io.files import load_torch_file, prepare_folder, save_atomic, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from tim4rec.io.saved_model import SavedModel, load_saved_model, save_model

_SAVED_MODEL_NAMES = ("SavedModel", "load_saved_model", "save_model")

__all__ = [
    "SavedModel", "load_saved_model", "load_torch_file", "prepare_folder", "save_atomic", "save_model",
    "write_bytes_atomic", "write_json_atomic",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``SavedModel``, ``load_saved_model`` and ``save_model``, imported from :mod:`tim4rec.io.saved_model`
    when first asked for (that module imports the models)."""
    if name in _SAVED_MODEL_NAMES:
        import importlib

        value = getattr(importlib.import_module("tim4rec.io.saved_model"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
