"""Benchmarks that write tables and plots: ``tim4rec bench quality`` (more to come)."""
