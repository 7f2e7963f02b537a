"""``tim4rec.train(config) -> results``: the Python entry point behind ``tim4rec train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tim4rec.config import load_config
from tim4rec.training.trainer import Trainer


def train(
    config: dict[str, Any],
    *,
    resume: bool = False,
    config_files: list[str | Path] = (),
    set_args: list[str] = (),
    output_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Merge ``config`` over the defaults (and packaged config), train, and return the results.

    ``config`` takes the YAML keys plus ``model`` and ``dataset``; the returned dict is what
    ``results.json`` holds, with test metrics under ``"test"``.
    """
    merged, notices = load_config(config_files=config_files, overrides=config, set_args=set_args)
    return Trainer(merged, output_dir, notices=notices).fit(resume=resume)
