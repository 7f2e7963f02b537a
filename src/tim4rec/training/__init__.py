"""Training: the loop, checkpoints and the Python API."""
