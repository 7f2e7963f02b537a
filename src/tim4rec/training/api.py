"""``tim4rec.train(config) -> results``: the Python entry point behind ``tim4rec train``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tim4rec.config import Config, load_config
from tim4rec.runtime import runtime_settings
from tim4rec.training.experiment import build_experiment
from tim4rec.training.trainer import Trainer


def run(config: Config, *, output_dir: str | Path | None = None, resume: bool = False, notices=()) -> dict[str, Any]:
    """Build the experiment of ``config`` and train it, under its thread and denormal settings."""
    with runtime_settings(threads=config.threads, flush_denormal=config.flush_denormal) as runtime:
        experiment = build_experiment(config, list(notices))
        return Trainer(experiment, output_dir, runtime=runtime).fit(resume=resume)


def train(
    config: dict[str, Any],
    *,
    resume: bool = False,
    config_files: Iterable[str | os.PathLike] = (),
    set_args: Iterable[str] = (),
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Merge ``config`` over the defaults (and packaged config), train, and return the results.

    ``config`` takes the YAML keys plus ``model`` and ``dataset``; the returned dict is what
    ``results.json`` holds, with test metrics under ``"test"``.
    """
    merged, notices = load_config(config_files=config_files, overrides=config, set_args=set_args)
    return run(merged, output_dir=output_dir, resume=resume, notices=notices)
