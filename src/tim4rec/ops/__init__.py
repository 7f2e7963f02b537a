"""Tensor operations."""

from tim4rec.ops.ssd import ssd_scan, ssd_step

__all__ = ["ssd_scan", "ssd_step"]
