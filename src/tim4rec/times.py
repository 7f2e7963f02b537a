"""What a time is, in every part of tim4rec: unix seconds, a finite number within ``±MAX_SECONDS``.

Data files, the Python API, the user store and the HTTP service all check times here, so a time
accepted by one is accepted by all. Fractions of a second are kept where times are stored and
compared (they order events within a second); models see whole seconds (``floor``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from tim4rec.errors import Tim4RecError

#: the largest time accepted, in seconds from 1970 (about 285 million years): integers up to here are
#: exact in float64 (how times are stored) and far inside int64 (how models read them)
MAX_SECONDS = 2**53


def time_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid time, or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"expected a number of unix seconds, got {value!r}"
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float64
        return f"is out of range (more than {MAX_SECONDS} seconds from 1970): {value!r}"
    if not math.isfinite(seconds):
        return f"is not a finite number: {value!r}"
    if abs(seconds) > MAX_SECONDS:
        return f"is out of range (more than {MAX_SECONDS} seconds from 1970): {value!r}"
    return None


def check_time(value: Any, where: str, error: type[Tim4RecError] = Tim4RecError) -> float:
    """``value`` as float seconds, or ``error("<where>: time ...")`` saying what is wrong with it."""
    problem = time_problem(value)
    if problem is not None:
        raise error(f"{where}: time {problem}")
    return float(value)


def whole_seconds(seconds: float) -> int:
    """The whole second a valid time falls in (what models read)."""
    return math.floor(seconds)


def format_time(seconds: float) -> str:
    """A valid time as text: whole seconds without a decimal point, others with every digit they have."""
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)
