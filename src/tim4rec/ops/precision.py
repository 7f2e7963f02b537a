"""Mixed precision: which parts of a step leave ``torch.autocast`` and run in float32, and why.

Under ``torch.autocast(dtype=torch.bfloat16)`` the linear layers and the output layer run in
bfloat16, which this library's CPUs (AVX-512 BF16, AMX) multiply several times faster than
float32. Three kinds of work do not gain and are kept in float32 by :func:`float32_compute`:

- the scans (SSD, selective, LRU): they compute in float32 by design (decays are products of up to
  hundreds of factors), so autocast would only cast their inner products back and forth;
- the depthwise causal convolution while gradients are recorded: oneDNN's bfloat16 depthwise backward
  on a CPU took about twice the float32 time (L 200, 192 channels, 1 thread). Without gradients
  (evaluation, serving) it runs in bfloat16 instead (:func:`as_float32_for_gradients`): its forward
  took 4.7 ms against 29.9 ms in float32 (B 256, L 200, 192 channels, 1 thread);
- CPU attention (``scaled_dot_product_attention``): its bfloat16 backward took about four times the
  float32 one (SASRec, L 200, 1 thread).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

#: the ``mixed_precision`` setting's values and the autocast dtype of each
PRECISIONS = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def mixed_precision(name: str, device_type: str) -> contextlib.AbstractContextManager:
    """The autocast context of the ``mixed_precision`` setting ``name`` on ``device_type`` (``off``: none)."""
    dtype = PRECISIONS[name]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def _autocast_device(args: tuple, kwargs: dict) -> str | None:
    """The device type of the first tensor argument when autocast is on there, else None (also for devices
    autocast does not know, such as ``meta``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            try:
                return value.device.type if torch.is_autocast_enabled(value.device.type) else None
            except RuntimeError:  # a device type without autocast
                return None
    return None


def float32_compute(function: Callable) -> Callable:
    """Run ``function`` with autocast switched off on its tensors' device. It must cast its inputs to the
    dtype it computes in itself (the scans do); see :func:`as_float32` for functions that do not."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        device = _autocast_device(args, kwargs)
        if device is None:
            return function(*args, **kwargs)
        with torch.autocast(device, enabled=False):
            return function(*args, **kwargs)

    return run


def _cast_and_run(function: Callable, device: str, cast: Callable[[Any], Any], args: tuple, kwargs: dict) -> Any:
    """``function`` on ``cast`` of each argument, with autocast off on ``device``."""
    with torch.autocast(device, enabled=False):
        return function(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})


def _widen(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def as_float32(function: Callable) -> Callable:
    """:func:`float32_compute` for a function of floating tensors that does not cast them itself: under
    autocast its floating tensor arguments are cast to float32 first (its result is then float32)."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        device = _autocast_device(args, kwargs)
        if device is None:
            return function(*args, **kwargs)
        return _cast_and_run(function, device, _widen, args, kwargs)

    return run


def as_float32_for_gradients(function: Callable) -> Callable:
    """:func:`as_float32` while gradients are recorded; without them (``torch.no_grad``, inference) under
    autocast its floating tensor arguments are cast to autocast's dtype instead and it runs with autocast
    off, so its result is in that dtype (and so are the results of what reads it in that dtype: the scans
    return their input's dtype). For an operation whose low-precision backward is slow but whose forward is
    fast. It must cast its own parameters to its input's dtype."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        device = _autocast_device(args, kwargs)
        if device is None:
            return function(*args, **kwargs)
        if torch.is_grad_enabled():
            return _cast_and_run(function, device, _widen, args, kwargs)
        dtype = torch.get_autocast_dtype(device)

        def narrow(value: Any) -> Any:  # float32 only, as autocast casts (float64 stays float64)
            return value.to(dtype) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value

        return _cast_and_run(function, device, narrow, args, kwargs)

    return run
