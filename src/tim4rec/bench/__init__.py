"""Benchmarks that write markdown, CSV and PNG: ``tim4rec bench quality``, ``speed`` and ``kernel``."""
