"""Process-wide settings (threads, denormal flushing) and the compute device, scoped.

:func:`runtime_settings` sets PyTorch's intra-op thread count and the CPU's flush-to-zero of
denormal numbers for the duration of a ``with`` block and restores the previous values on exit,
so a training run or a benchmark never leaks them into the caller (a notebook, the test suite).

Denormal numbers (float32 below 1.2e-38) take a slow path in the CPU's arithmetic. The SSD
models' gradients decay through the state towards old positions and pass through that range:
flushing them (FTZ/DAZ) made TiM4Rec's training step at L = 3200 3.4x faster on one CPU thread
(docs/benchmarks/denormals), changing no normal number.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tim4rec.errors import ConfigError

_DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def denormals_flushed() -> bool:
    """True when the CPU currently reads denormal float32 numbers as zero."""
    return (torch.tensor([_DENORMAL]) * 1.0).item() == 0.0


@dataclass(frozen=True)
class RuntimeSettings:
    """What :func:`runtime_settings` set: the thread count and whether denormals are flushed."""

    threads: int
    flush_denormal: bool


@contextlib.contextmanager
def runtime_settings(*, threads: int | None = None, flush_denormal: bool | None = None) -> Iterator[RuntimeSettings]:
    """Set threads (None: every usable core) and denormal flushing (None: leave it) inside the block.

    Yields what took effect (flushing is False where the CPU cannot flush); the previous values
    are restored on exit, also after an exception or Ctrl-C.
    """
    previous_threads, previous_flush = torch.get_num_threads(), denormals_flushed()
    wanted = int(threads) if threads else usable_cores()
    try:
        torch.set_num_threads(wanted)
        flushed = previous_flush if flush_denormal is None else bool(torch.set_flush_denormal(flush_denormal))
        yield RuntimeSettings(threads=wanted, flush_denormal=flush_denormal is not False and flushed)
    finally:
        torch.set_num_threads(previous_threads)
        torch.set_flush_denormal(previous_flush)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} asked for, but this torch build sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
