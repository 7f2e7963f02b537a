"""Files: atomic writes, safe loading, and saved models (weights + config + id maps).

Used by training, evaluation and serving alike; imports nothing from them.
"""

from tim4rec.io.files import load_torch_file, prepare_folder, save_atomic, write_json_atomic
from tim4rec.io.saved_model import SavedModel, load_saved_model, save_model

__all__ = [
    "SavedModel", "load_saved_model", "load_torch_file", "prepare_folder", "save_atomic", "save_model",
    "write_json_atomic",
]  # fmt: skip
