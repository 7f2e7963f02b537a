"""``torch.compile`` for the hot kernels, switched on for the duration of a block.

:func:`compiled` marks a function (the SSD's chunk computation, the selective scan's chunk forward
and backward, the gated RMSNorm): it runs
eagerly unless :func:`compiling` is active, in which case it runs through ``torch.compile``
(inductor; on a CPU it generates C++ with the system compiler). Measured on one CPU thread: the
SSD chunk computation forward at b = 16, l = 4096 went from 157 to 110 ms, forward and backward
from 318 to 222 ms; the first call of each new shape compiles (11-23 s, then cached on disk).

Where compiling fails (no C++ compiler, an unsupported platform), one notice is printed and the
eager function runs from then on: results are the same either way.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

_state = {"enabled": False, "broken": None}
_compiled: dict[Callable, Callable] = {}


def compiled(function: Callable) -> Callable:
    """Run ``function`` through ``torch.compile`` while :func:`compiling` is active, eagerly otherwise."""

    @functools.wraps(function)
    def dispatch(*args: Any, **kwargs: Any) -> Any:
        if not _state["enabled"] or _state["broken"] is not None or torch.compiler.is_compiling():
            return function(*args, **kwargs)
        if function not in _compiled:  # one specialisation per shape: dynamic-shape code ran slower here
            _compiled[function] = torch.compile(function, dynamic=False)
        try:
            return _compiled[function](*args, **kwargs)
        except Exception as error:  # a missing compiler surfaces here, on the first call
            _state["broken"] = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            )
            print(
                f"tim4rec: torch.compile is not available here ({_state['broken'][:200]}); running eagerly",
                file=sys.stderr,
            )
            return function(*args, **kwargs)

    return dispatch


@contextlib.contextmanager
def compiling(enabled: bool = True) -> Iterator[bool]:
    """Use the compiled kernels inside the block; yields whether compiling is on (False once it failed)."""
    previous = _state["enabled"]
    _state["enabled"] = bool(enabled)
    try:
        yield bool(enabled) and _state["broken"] is None
    finally:
        _state["enabled"] = previous


def compile_failure() -> str | None:
    """Why compiling failed in this process, or None."""
    return _state["broken"]
