"""Progress and notice lines on stderr (``tim4rec: ...``), shared by training, benchmarks and commands.

A leaf module: it imports nothing from tim4rec, so any module may use it.
"""

from __future__ import annotations

import sys


def log(message: str) -> None:
    """Print ``tim4rec: message`` to stderr, flushed at once."""
    print(f"tim4rec: {message}", file=sys.stderr, flush=True)
