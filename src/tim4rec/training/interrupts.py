"""Ctrl-C or SIGTERM during training steps, held until the running step ends.

An interrupt raised inside a step could leave the weights half-updated, so the trainer used to fall back
to its last complete epoch and retrain the rest: an hour of work for a model whose epoch takes an hour.
While :class:`HeldInterrupt` is active the first Ctrl-C (SIGINT) or SIGTERM only marks the run: the step
finishes, the trainer saves the epoch's place (as for a ``time_budget`` cut) and then raises what the
signal's own handler raises (``KeyboardInterrupt``; the command line's ``Terminated``). A second signal of
the same kind raises at once (one of the other kind is held too: torchrun follows a terminal's Ctrl-C with a
SIGTERM to its workers). A signal the trainer did not act on (``taken``) before the context ends is raised
as it leaves. Only signals whose handler raises are held (Python's Ctrl-C handler, a handler a program
installed), and only in the main thread, where Python runs signal handlers.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

#: the signals held during training steps
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HeldInterrupt:
    """A context for the training steps: ``requested`` is the number of the signal that came in, else None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self.taken = False  # set by the trainer when it acts on ``requested``
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

    def __enter__(self) -> HeldInterrupt:
        if threading.current_thread() is threading.main_thread():
            for number in HELD_SIGNALS:
                previous = signal.getsignal(number)
                if callable(previous):  # SIG_DFL and SIG_IGN are left as they are
                    self._previous[number] = previous
                    signal.signal(number, self._hold)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self._restore()
        if exc_type is None and self.requested is not None and not self.taken:  # came after the last look
            self._previous[self.requested](self.requested, None)

    def _hold(self, number: int, frame: FrameType | None) -> None:
        if self.requested == number:  # the same signal again: stop now, as without this context
            self._restore()
            self._previous[number](number, frame)
        if self.requested is None:
            self.requested = number

    def _restore(self) -> None:
        for number, previous in self._previous.items():
            if signal.getsignal(number) == self._hold:
                signal.signal(number, previous)

    def raise_requested(self) -> None:
        """Raise what the held signal's handler raises; KeyboardInterrupt where it returns, or where the run
        stops for another process's signal (``requested`` is None here)."""
        if self.requested is not None:
            self._previous[self.requested](self.requested, None)
        raise KeyboardInterrupt
