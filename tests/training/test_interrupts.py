"""Interrupts held during training steps: the first signal is recorded, a second one of the same kind raises at
once, one nobody acted on is raised as the context ends, the handlers are put back, and only handlers that raise
are replaced (never SIG_DFL or SIG_IGN)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tim4rec.training.interrupts import HeldInterrupt


class Stopped(Exception):
    pass


def raising_handler(number, frame):
    raise Stopped(number)


@pytest.fixture
def sigterm_raises():
    previous = signal.signal(signal.SIGTERM, raising_handler)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_the_first_signal_is_held_and_raised_later_as_its_handler_would(sigterm_raises):
    with HeldInterrupt() as held:
        os.kill(os.getpid(), signal.SIGTERM)  # handled here: recorded, nothing raised
        assert held.requested == signal.SIGTERM
        held.taken = True
    assert signal.getsignal(signal.SIGTERM) is raising_handler
    with pytest.raises(Stopped):
        held.raise_requested()


def test_a_second_signal_raises_at_once(sigterm_raises):
    with pytest.raises(Stopped), HeldInterrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is raising_handler


def test_another_kind_of_signal_is_held_too(sigterm_raises):
    """torchrun follows a terminal's Ctrl-C with SIGTERM to its workers: that is not a second Ctrl-C."""
    with HeldInterrupt() as held:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        assert held.requested == signal.SIGINT
        held.taken = True


def test_a_signal_nobody_acted_on_is_raised_as_the_context_ends(sigterm_raises):
    with pytest.raises(Stopped), HeldInterrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is raising_handler


def test_ctrl_c_is_raised_as_keyboard_interrupt():
    with HeldInterrupt() as held:
        os.kill(os.getpid(), signal.SIGINT)
        held.taken = True
    with pytest.raises(KeyboardInterrupt):
        held.raise_requested()
    with pytest.raises(KeyboardInterrupt):  # stopped for another process's signal: none came here
        HeldInterrupt().raise_requested()


def test_default_and_ignored_dispositions_are_left_alone():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with HeldInterrupt():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # held
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_is_replaced():
    seen = []

    def run():
        with HeldInterrupt():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]
