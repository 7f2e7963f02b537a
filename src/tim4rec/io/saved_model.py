"""Saved models (``best.pt``): the weights and everything needed to rebuild the model and map ids back.

A saved model is a plain dict of tensors and plain data, so it loads with ``weights_only=True``:

- ``format``: ``"tim4rec-model-1"``; ``version``: the library version that wrote it;
- ``model``, ``n_items``, ``max_seq_length``, ``hyperparameters``: what :func:`tim4rec.models.create` takes;
- ``model_state``: the state dict;
- ``config``: the run's flat config (dataset, fields, filtering, split, ...);
- ``item_tokens``: the dataset's item ids, index i = model id i (index 0 is padding);
- ``epoch``, ``valid``: the epoch the weights come from and its validation metrics.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tim4rec.errors import ConfigError, Tim4RecError
from tim4rec.io.files import check_finite, load_torch_file, save_atomic
from tim4rec.models import create
from tim4rec.models.base import SequentialRecommender
from tim4rec.values import Parser, positive_int, text
from tim4rec.version import __version__

FORMAT = "tim4rec-model-1"


def _dict(expected: str) -> Parser:
    """A parser of a field that must be a dict (``expected`` says of what, in the error)."""

    def parse(key: str, value: Any) -> dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected {expected}, got {type(value).__name__}")
        return value

    return parse


def _item_tokens(key: str, value: Any) -> list[str]:
    """The dataset's item ids as strings (integers are read as their digits, as the data readers read them)."""
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of item ids, got {type(value).__name__}")
    for index, token in enumerate(value):
        if isinstance(token, bool) or not isinstance(token, (str, int)):
            raise ConfigError(f"{key}: expected item ids (strings), got {type(token).__name__} at index {index}")
    return [str(token) for token in value]


def _tensors(key: str, value: Any) -> dict[str, torch.Tensor]:
    """A state dict: names to tensors."""
    for name, tensor in _dict("a dict of tensors")(key, value).items():
        if not isinstance(tensor, torch.Tensor):
            raise ConfigError(f"{key}: expected a dict of tensors, got {type(tensor).__name__} at {name!r}")
    return value


#: each field a saved model must have, and its parser
_FIELDS: dict[str, Parser] = {
    "model": text,
    "n_items": positive_int,
    "max_seq_length": positive_int,
    "hyperparameters": _dict("a dict of hyper-parameters"),
    "model_state": _tensors,
    "config": _dict("a dict of settings"),
    "item_tokens": _item_tokens,
}


@dataclass
class SavedModel:
    """The contents of a saved model file."""

    model: str
    n_items: int
    max_seq_length: int
    hyperparameters: dict[str, Any]
    model_state: dict[str, Any]
    config: dict[str, Any]
    item_tokens: list[str]
    epoch: int | None = None
    valid: dict[str, float] | None = None
    version: str = __version__
    path: Path | None = None

    def fingerprint(self) -> str:
        """A SHA-256 of the model's name, hyper-parameters, item ids and weights: equal for the same model."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.model, self.n_items, self.max_seq_length, self.hyperparameters,
                                  self.item_tokens], sort_keys=True, default=str).encode())  # fmt: skip
        for name in sorted(self.model_state):
            digest.update(name.encode())
            digest.update(self.model_state[name].detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def build(self) -> SequentialRecommender:
        """The model with its saved weights, in eval mode, on the CPU; weights holding NaN or infinity
        are refused (such a model scores every item NaN and recommends nothing)."""
        where = self.path or "saved model"
        check_finite(self.model_state, where)
        try:
            model = create(self.model, self.n_items, self.max_seq_length, **self.hyperparameters)
            model.load_state_dict(self.model_state)
        except ConfigError as error:
            raise Tim4RecError(f"{where}: {error}") from None
        except (RuntimeError, TypeError, ValueError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise Tim4RecError(f"{where}: the weights do not fit the model it names ({first})") from None
        return model.eval()


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    name: str,
    n_items: int,
    max_seq_length: int,
    hyperparameters: dict[str, Any],
    config: dict[str, Any],
    item_tokens: list[str],
    epoch: int | None,
    valid: dict[str, float] | None,
) -> None:
    """Write ``model`` (atomically) with what is needed to rebuild it."""
    save_atomic(
        {
            "format": FORMAT,
            "version": __version__,
            "model": name,
            "n_items": n_items,
            "max_seq_length": max_seq_length,
            "hyperparameters": hyperparameters,
            "model_state": model.state_dict(),
            "config": config,
            "item_tokens": item_tokens,
            "epoch": epoch,
            "valid": valid,
        },
        path,
    )


def load_saved_model(path: str | Path) -> SavedModel:
    """Read a saved model file (never runs code from it), each field checked by its parser (``_FIELDS``);
    a clear error naming the file and the field for anything else."""
    path = Path(path)
    saved = load_torch_file(path, "saved model")
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise Tim4RecError(f"{path}: not a tim4rec model file (best.pt)")
    missing = [key for key in _FIELDS if key not in saved]
    if missing:
        raise Tim4RecError(f"{path}: a damaged tim4rec model file (missing {missing})")
    try:
        fields = {key: parse(key, saved[key]) for key, parse in _FIELDS.items()}
    except ConfigError as error:
        raise Tim4RecError(f"{path}: a damaged tim4rec model file ({error})") from None
    if len(fields["item_tokens"]) != fields["n_items"] + 1:
        raise Tim4RecError(
            f"{path}: a damaged tim4rec model file (item_tokens: expected n_items + 1 = {fields['n_items'] + 1} "
            f"item ids, got {len(fields['item_tokens'])})"
        )
    return SavedModel(
        **fields,
        epoch=saved.get("epoch"),
        valid=saved.get("valid"),
        version=saved.get("version", "unknown"),
        path=path,
    )
