"""Shared by the kernel tests."""

import torch


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    """assert_close with atol = tol * max|expected| (tolerance relative to the output scale) and rtol = tol."""
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=tol * max(scale, 1e-12), rtol=tol)
