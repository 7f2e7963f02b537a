"""Models on one contract (see :mod:`tim4rec.models.base`), created by name.

>>> model = create("sasrec", n_items=1349, max_seq_length=50, hidden_size=64)
"""

from __future__ import annotations

import inspect
from typing import Any

from tim4rec.errors import ConfigError
from tim4rec.models.base import SequentialRecommender
from tim4rec.models.sasrec import SASRec
from tim4rec.models.tim4rec import SSD4Rec, TiM4Rec

MODELS: dict[str, type[SequentialRecommender]] = {
    "sasrec": SASRec,
    "tim4rec": TiM4Rec,
    "ssd4rec": SSD4Rec,
}


def model_class(name: str) -> type[SequentialRecommender]:
    """The class registered under ``name`` (case-insensitive)."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; available: {sorted(MODELS)}") from None


def model_defaults(name: str) -> dict[str, Any]:
    """Default hyper-parameters of a model, keyed by their YAML names."""
    return dict(model_class(name).hyperparameters)


def create(name: str, n_items: int, max_seq_length: int, **hyperparameters: Any) -> SequentialRecommender:
    """Build model ``name`` for ``n_items`` items and sequences of length ``max_seq_length``.

    Hyper-parameters not given take the model's defaults; an unknown one is a
    :class:`~tim4rec.errors.ConfigError`.
    """
    cls = model_class(name)
    unknown = sorted(set(hyperparameters) - set(cls.hyperparameters))
    if unknown:
        raise ConfigError(f"model '{name}' has no hyper-parameter {unknown}; it takes {sorted(cls.hyperparameters)}")
    arguments = {**cls.hyperparameters, **hyperparameters}
    accepted = inspect.signature(cls.__init__).parameters
    return cls(n_items, max_seq_length, **{k: v for k, v in arguments.items() if k in accepted})


__all__ = ["MODELS", "SequentialRecommender", "create", "model_class", "model_defaults"]
