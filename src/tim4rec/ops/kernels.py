"""Where the scans run: mamba-ssm's fused CUDA/Triton kernels, or this package's PyTorch code.

This is the one place that decides. :func:`fused_kernel` hands ``ssd_scan`` (and
``ssd_readout``) mamba-ssm's ``mamba_chunk_scan_combined`` and ``selective_scan`` its
``selective_scan_fn`` when all of these hold:

1. the ``kernels`` setting is ``auto`` (``torch`` forces the PyTorch path: :func:`kernel_mode`);
2. the tensors are on a device the fused kernels serve (CUDA);
3. the call is one the kernel supports (float32, float16 or bfloat16 input; for the selective
   scan, no initial state);
4. mamba-ssm imports (it is never required; ``pip install mamba-ssm`` on a CUDA machine).

Both kernels compute the same functions as the PyTorch code (same arguments, same semantics), so
results agree to float rounding; ``tests/ops/test_kernels.py`` checks that where CUDA and
mamba-ssm are present. The first call of each scan on a CUDA device along each path prints one notice naming
the path; :func:`paths_taken` lists every path taken in this process (results.json records it).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator

import torch

# scan -> (module, function) of its fused kernel in mamba-ssm
FUSED = {
    "ssd_scan": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "selective_scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
}
KERNEL_DEVICES = ("cuda",)  # device types the fused kernels run on
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MODES = ("auto", "torch")

_state = {"mode": "auto"}
_loaded: dict[str, tuple[Callable | None, str]] = {}  # scan -> (kernel or None, why not)
_taken: dict[str, str] = {}  # scan -> the last path taken
_announced: set[tuple[str, str, str]] = set()  # (scan, device, path) notices printed


def _load(scan: str) -> tuple[Callable | None, str]:
    """The fused kernel of ``scan`` (imported once), or None and the reason it is not importable."""
    if scan not in _loaded:
        module, name = FUSED[scan]
        try:
            _loaded[scan] = (getattr(importlib.import_module(module), name), "")
        except Exception as error:  # ImportError, or a Triton/driver error raised while importing
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _loaded[scan] = (None, f"mamba-ssm is not importable: {first[:160]}")
    return _loaded[scan]


def fused_kernel(scan: str, tensor: torch.Tensor, *, supported: bool = True) -> Callable | None:
    """mamba-ssm's kernel for ``scan`` ('ssd_scan' or 'selective_scan') on ``tensor``, or None for the
    PyTorch path; ``supported``: whether the caller's arguments are ones the kernel takes."""
    kernel, path = None, None
    if tensor.device.type not in KERNEL_DEVICES:
        path = f"PyTorch ({tensor.device.type})"
    elif _state["mode"] == "torch":
        path = "PyTorch (kernels: torch)"
    elif not supported or tensor.dtype not in KERNEL_DTYPES:
        path = f"PyTorch (arguments the fused kernel does not take: {tensor.dtype})"
    else:
        kernel, why_not = _load(scan)
        path = f"mamba-ssm {'.'.join(FUSED[scan])}" if kernel is not None else f"PyTorch ({why_not})"
    if tensor.device.type in KERNEL_DEVICES and (scan, str(tensor.device), path) not in _announced:
        _announced.add((scan, str(tensor.device), path))
        print(f"tim4rec: {scan} on {tensor.device}: {path}", file=sys.stderr)
    _taken[scan] = path
    return kernel


def paths_taken() -> dict[str, str]:
    """Each scan called in this process and the path its last call took."""
    return dict(_taken)


@contextlib.contextmanager
def kernel_mode(mode: str = "auto") -> Iterator[str]:
    """``auto`` (fused kernels where they apply) or ``torch`` (the PyTorch path everywhere) inside the block."""
    if mode not in MODES:
        raise ValueError(f"kernels: expected one of {', '.join(MODES)}, got {mode!r}")
    previous = _state["mode"]
    _state["mode"] = mode
    try:
        yield mode
    finally:
        _state["mode"] = previous
