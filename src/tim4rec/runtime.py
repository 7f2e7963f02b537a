"""Process-wide settings (threads, denormal flushing, freed memory) and the compute device, scoped;
facts about the process (library versions, the machine, peak memory) that results record.

:func:`runtime_settings` sets PyTorch's intra-op thread count, the CPU's flush-to-zero of
denormal numbers and whether freed memory stays in the process, for the duration of a ``with``
block, and restores the previous state on exit, so a training run or a benchmark never leaks them
into the caller (a notebook, the test suite).

Freed memory: glibc's malloc serves large blocks (above a threshold of at most 32 MiB) with
``mmap`` and returns them to the system when freed, so every large tensor of every step is
allocated afresh and its pages are faulted in again, which can cost more than the arithmetic on
the tensor (the README's speed section gives a step's time with and without this setting).
``reuse_memory`` tells malloc to serve every block from the heap and not to give freed memory back
while the block runs (``mallopt``: no mmap, no trimming), so steady-state steps reuse warm pages; on
exit the defaults come back and the unused heap is returned.

Denormal numbers (float32 below 1.2e-38) take a slow path in the CPU's arithmetic. The SSD
models' gradients decay through the state towards old positions and pass through that range:
flushing them (FTZ/DAZ) made TiM4Rec's training step at L = 3200 3.4x faster on one CPU thread
(docs/benchmarks/denormals), changing no normal number.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tim4rec.errors import ConfigError
from tim4rec.ops.compile import compiling
from tim4rec.ops.kernels import kernel_mode
from tim4rec.values import positive_int
from tim4rec.version import __version__

_DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


def usable_cores() -> int:
    """The number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each CPU from /proc/stat."""
    times = {}
    with open("/proc/stat") as handle:
        for line in handle:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                values = [int(v) for v in fields]
                idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                times[int(name[3:])] = (sum(values) - idle, sum(values))
    return times


def idle_cores(sample_seconds: float = 0.3) -> int:
    """How many of this process's cores were mostly idle over a short sample (at least 1).

    Linux: /proc/stat sampled ``sample_seconds`` apart; a core busy under half the time counts as
    idle. Elsewhere: the usable cores minus the one-minute load average.
    """
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        before = _cpu_times()
        time.sleep(sample_seconds)
        after = _cpu_times()
    except (OSError, ValueError, IndexError):
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(1, len(usable) - round(load))
    idle = 0
    for cpu in usable:
        if cpu in before and cpu in after:
            busy, total = (a - b for a, b in zip(after[cpu], before[cpu]))
            idle += total > 0 and busy / total < 0.5
    return max(1, idle)


def default_threads() -> int:
    """The thread count used when ``threads`` is not set: the cores idle at start.

    OpenMP's threads wait for each other, so a thread on a core that another process keeps busy
    slows the step below what one thread gives, while on idle cores more threads are faster; no
    fixed count is near the best in both cases (docs/benchmarks/threads).
    """
    return min(idle_cores(), usable_cores())


def denormals_flushed() -> bool:
    """True when the CPU currently reads denormal float32 numbers as zero."""
    return (torch.tensor([_DENORMAL]) * 1.0).item() == 0.0


# glibc mallopt parameters and their defaults
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 0, _M_MMAP_MAX: 65536}


def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def _reused_memory(enabled: bool) -> Iterator[bool]:
    """Keep freed memory in the process inside the block (glibc only); yields whether it took effect."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    applied = all(libc.mallopt(option, value) == 1 for option, value in
                  ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20)))  # fmt: skip
    try:
        yield applied
    finally:
        for option, value in _GLIBC_DEFAULTS.items():
            libc.mallopt(option, value)
        libc.malloc_trim(0)


@dataclass(frozen=True)
class RuntimeSettings:
    """What :func:`runtime_settings` set: the thread count, whether denormals are flushed and
    whether freed memory is kept for reuse."""

    threads: int
    flush_denormal: bool
    reuse_memory: bool = False
    compiled: bool = False
    kernels: str = "auto"


@contextlib.contextmanager
def runtime_settings(
    *,
    threads: int | None = None,
    flush_denormal: bool | None = None,
    reuse_memory: bool = False,
    compile: bool = False,
    kernels: str = "auto",
) -> Iterator[RuntimeSettings]:
    """Set threads (None: the cores idle now, :func:`default_threads`), denormal flushing (None: leave it), the reuse of
    freed memory, the compiled kernels (:mod:`tim4rec.ops.compile`) and whether mamba-ssm's CUDA kernels may
    run (``kernels``: auto or torch, :mod:`tim4rec.ops.kernels`) inside the block. A ``threads`` that is not a
    positive integer is a ConfigError naming ``threads``, before anything is set.

    Yields what took effect (flushing is False where the CPU cannot flush, reuse where the C
    library is not glibc); the previous values are restored on exit, also after an exception or Ctrl-C.
    """
    previous_threads, previous_flush = torch.get_num_threads(), denormals_flushed()
    wanted = default_threads() if threads is None else positive_int("threads", threads)
    try:
        torch.set_num_threads(wanted)
        flushed = previous_flush if flush_denormal is None else bool(torch.set_flush_denormal(flush_denormal))
        with _reused_memory(reuse_memory) as reused, compiling(compile) as compiled, kernel_mode(kernels):
            yield RuntimeSettings(
                threads=wanted,
                flush_denormal=flush_denormal is not False and flushed,
                reuse_memory=reused,
                compiled=compiled,
                kernels=kernels,
            )
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


def versions() -> dict[str, str]:
    """The versions of tim4rec, its main libraries and Python."""
    import pandas

    return {
        "tim4rec": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "python": platform.python_version(),
    }


def peak_rss_mib() -> float | None:
    """The process's peak resident memory so far, in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:
        return None
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def machine() -> dict[str, Any]:
    """The platform, processor, CPU count and load average now."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load],
    }
