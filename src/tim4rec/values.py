"""Parsers of setting values: ``parse(key, value) -> value`` or a ConfigError that names the key.

Shared by the run settings (:mod:`tim4rec.config`) and the models' hyper-parameters
(:mod:`tim4rec.models.hyperparameters`), so that a value means the same everywhere: booleans are
``true``/``false`` only, numbers are finite, ranges are checked.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from tim4rec.errors import ConfigError

Parser = Callable[[str, Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def text(key: str, value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def optional(parser: Parser) -> Parser:
    def parse(key: str, value: Any) -> Any:
        return None if value is None else parser(key, value)

    return parse


def boolean(key: str, value: Any) -> bool:
    """``true``/``false`` (YAML reads ``yes``/``no`` as these too); any other value is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value


def nonnegative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}: expected a non-negative integer, got {value!r}")
    return value


def int_in(low: int, high: int) -> Parser:
    """A parser of integers from ``low`` to ``high`` inclusive: for values that a library or a table
    size bounds (a seed NumPy takes, rows of an embedding table)."""

    def parse(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key}: expected an integer from {low} to {high}, got {value!r}")
        return value

    return parse


def positive_number(key: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{key}: expected a positive number, got {value!r}")
    return value


def nonnegative_number(key: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise ConfigError(f"{key}: expected a non-negative number, got {value!r}")
    return value


def number(key: str, value: Any) -> float:
    if not _is_number(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return value


def fraction(key: str, value: Any) -> float:
    """A probability or share, 0 <= value < 1 (a dropout of 1 would drop everything)."""
    if not _is_number(value) or not 0 <= value < 1:
        raise ConfigError(f"{key}: expected a number in [0, 1), got {value!r}")
    return value


def choice(*options: str) -> Parser:
    def parse(key: str, value: Any) -> str:
        if value not in options:
            raise ConfigError(f"{key}: expected one of {list(options)}, got {value!r}")
        return value

    return parse


def switch(*options: str) -> Parser:
    """:func:`choice` of ``off`` and ``options``, where ``false`` also means ``off``: YAML reads an unquoted
    ``off`` (``--set mixed_precision=off``) as the boolean false."""
    parse_option = choice("off", *options)

    def parse(key: str, value: Any) -> str:
        return "off" if value is False else parse_option(key, value)

    return parse


def unit_interval(key: str, value: Any) -> float:
    """A number in [0, 1]."""
    if not _is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"{key}: expected a number in [0, 1], got {value!r}")
    return value


def open_fraction(key: str, value: Any) -> float:
    """A number in (0, 1)."""
    if not _is_number(value) or not 0 < value < 1:
        raise ConfigError(f"{key}: expected a number in (0, 1), got {value!r}")
    return value
