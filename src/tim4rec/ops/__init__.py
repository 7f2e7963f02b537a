"""Kernels with no model knowledge: the SSD (Mamba-2) scan, the Mamba-1 selective scan, the LRU scan."""

from tim4rec.ops.ssd import ssd_chunked_reference, ssd_quadratic, ssd_readout, ssd_recurrent, ssd_scan, ssd_step

__all__ = ["ssd_chunked_reference", "ssd_quadratic", "ssd_readout", "ssd_recurrent", "ssd_scan", "ssd_step"]
