"""Models on one contract (see :mod:`tim4rec.models.base`), created by name.

>>> model = create("sasrec", n_items=1349, max_seq_length=50, hidden_size=64)

Each model lives in its own module, imported when first asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import torch

from tim4rec.errors import ConfigError
from tim4rec.models.base import SequentialRecommender
from tim4rec.values import positive_int

#: name -> (module, class)
REGISTRY: dict[str, tuple[str, str]] = {
    "sasrec": ("tim4rec.models.sasrec", "SASRec"),
    "tim4rec": ("tim4rec.models.tim4rec", "TiM4Rec"),
    "ssd4rec": ("tim4rec.models.tim4rec", "SSD4Rec"),
    "tisasrec": ("tim4rec.models.tisasrec", "TiSASRec"),
    "mamba4rec": ("tim4rec.models.mamba4rec", "Mamba4Rec"),
    "gru4rec": ("tim4rec.models.gru4rec", "GRU4Rec"),
    "bert4rec": ("tim4rec.models.bert4rec", "BERT4Rec"),
    "caser": ("tim4rec.models.caser", "Caser"),
    "lrurec": ("tim4rec.models.lrurec", "LRURec"),
    "mostpop": ("tim4rec.models.mostpop", "MostPop"),
}


def available() -> list[str]:
    """Names of the registered models whose module is present."""
    return sorted(name for name, (module, _) in REGISTRY.items() if importlib.util.find_spec(module) is not None)


def model_class(name: str) -> type[SequentialRecommender]:
    """The class registered under ``name`` (case-insensitive)."""
    key = str(name).lower()
    if key not in REGISTRY or key not in available():
        raise ConfigError(f"unknown model '{name}'; available: {available()}")
    module, cls = REGISTRY[key]
    return getattr(importlib.import_module(module), cls)


def model_defaults(name: str) -> dict[str, Any]:
    """Default hyper-parameters of a model, keyed by their YAML names."""
    return model_class(name).Hyperparameters.defaults()


def create(name: str, n_items: int, max_seq_length: int, **hyperparameters: Any) -> SequentialRecommender:
    """Build model ``name`` for ``n_items`` items and sequences of length ``max_seq_length``.

    Hyper-parameters not given take the model's defaults; an unknown one, or one of the wrong
    type or range (:mod:`tim4rec.models.hyperparameters`), is a :class:`~tim4rec.errors.ConfigError`; so is a
    model too large for the memory, naming the sizes that make it so.
    """
    cls = model_class(name)
    positive_int("n_items", n_items)
    positive_int("MAX_ITEM_LIST_LENGTH", max_seq_length)
    hp = cls.Hyperparameters.parse(hyperparameters, cls.name)
    try:
        return cls(n_items, max_seq_length, hp)
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        sizes = {"n_items": n_items, "MAX_ITEM_LIST_LENGTH": max_seq_length}
        sizes.update({k: v for k, v in hp.sizes().items() if v is not None})
        listed = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ConfigError(f"model '{cls.name}' does not fit in memory with {listed}; choose smaller sizes") from None


def out_of_memory(error: BaseException) -> bool:
    """True for the allocator's refusal: MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(error)


__all__ = ["REGISTRY", "SequentialRecommender", "available", "create", "model_class", "model_defaults"]
