"""Hyper-parameters: one frozen dataclass per model, each field declaring its default and its parser.

The names are RecBole's and the reference repositories' (``hidden_size``, ``n_heads``,
``dropout_prob``, ...), as they appear in YAML configs and in saved models. A model class names
its dataclass (``Model.Hyperparameters``) and is built as ``Model(n_items, max_seq_length, hp)``;
:meth:`Hyperparameters.parse` turns a dict of raw values into one (every value checked by its
field's parser, then the constraints between fields, :meth:`Hyperparameters.check`), and
:meth:`Hyperparameters.to_dict` gives the dict that configs and saved models keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from tim4rec.errors import ConfigError
from tim4rec.values import Parser

Self = TypeVar("Self", bound="Hyperparameters")


def hyperparameter(default: Any, parse: Parser, *, size: bool = False) -> Any:
    """A field of a hyper-parameter dataclass: its default, the parser of its values, and whether it
    sets the size of the model's tensors (named when a model does not fit in memory)."""
    return dataclasses.field(default=default, metadata={"parse": parse, "size": size})


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Base of the models' hyper-parameter dataclasses (a model without any: MostPop)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every hyper-parameter's name and default, in declaration order."""
        return {field.name: field.default for field in dataclasses.fields(cls)}

    @classmethod
    def parse(cls: type[Self], values: Mapping[str, Any], model: str) -> Self:
        """The hyper-parameters of ``values`` (raw config values; missing ones take their defaults) for the
        model named ``model``; a ConfigError naming the key for an unknown name or a bad value."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(f"model '{model}' has no hyper-parameter {unknown}; it takes {sorted(fields)}")
        parsed = cls(**{key: fields[key].metadata["parse"](key, value) for key, value in values.items()})
        parsed.check()
        return parsed

    def check(self) -> None:
        """Constraints between hyper-parameters (each one's type and range is checked before); ConfigError."""

    def to_dict(self) -> dict[str, Any]:
        """The values by name: what configs and saved models keep."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def sizes(self) -> dict[str, Any]:
        """The hyper-parameters that set tensor sizes, with their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["size"]}
