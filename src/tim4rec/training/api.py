"""``tim4rec.train(...) -> results``: the Python entry point behind ``tim4rec train``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tim4rec.config import Config, load_config
from tim4rec.errors import ConfigError, Tim4RecError
from tim4rec.io.files import output_folder
from tim4rec.runtime import resolve_device, runtime_settings
from tim4rec.training.distributed import Distributed, join, leave, peer_lost
from tim4rec.training.experiment import build_experiment
from tim4rec.training.trainer import Trainer, default_output_dir
from tim4rec.values import boolean


def run(
    config: Config,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    notices=(),
    on_epoch: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Build the experiment of ``config`` and train it, under its thread and denormal settings
    (on every process of a torchrun launch: :mod:`tim4rec.training.distributed`). ``on_epoch(epoch, score)``
    hears each epoch's validation score (``valid_metric``); an error it raises stops the run there."""
    distributed = join(resolve_device(config.device))
    try:
        return _run(config, output_dir, resume, notices, distributed, on_epoch)
    except RuntimeError as error:
        if not (distributed.active and peer_lost(error)):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise Tim4RecError(
            f"rank {distributed.rank} of {distributed.world}: another process of the distributed run stopped or "
            f"stopped answering ({first[:300]}); the last complete epoch is in the output folder's checkpoint.pt, "
            "continue with the same torchrun command and --resume"
        ) from None
    finally:
        leave()


def _run(config: Config, output_dir, resume: bool, notices, distributed: Distributed, on_epoch=None) -> dict[str, Any]:
    """Train in the output folder, which rank 0 creates; a run that fails before writing there leaves no folder."""
    folder = Path(output_dir or config.output_dir or default_output_dir(config))
    with (
        output_folder(folder) if distributed.main else contextlib.nullcontext(folder),
        runtime_settings(
            threads=config.threads,
            flush_denormal=config.flush_denormal,
            reuse_memory=config.reuse_memory,
            compile=config.compile,
            kernels=config.kernels,
        ) as runtime,
    ):
        experiment = build_experiment(config, list(notices), distributed)
        trainer = Trainer(experiment, folder, runtime=runtime)
        if on_epoch is not None:
            trainer.epoch_end_hook = lambda epoch: on_epoch(epoch, trainer.state.history[-1]["valid"][config.valid_key])
        return trainer.fit(resume=resume)


def _paths(name: str, value: Any) -> list[str]:
    """One path or a list of them (str or os.PathLike)."""
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, Iterable) and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    raise ConfigError(f"{name}: expected a path or a list of paths, got {value!r}")


def train(
    config: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    config_files: Iterable[str | os.PathLike] | str | os.PathLike = (),
    set_args: Iterable[str] | str = (),
    output_dir: str | os.PathLike | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Train and evaluate a model; return the results (what ``results.json`` holds, test metrics under ``"test"``).

    Settings come as a dict (``config``, the YAML keys plus ``model`` and ``dataset``) and/or as
    keywords, which win: ``tim4rec.train(model="sasrec", dataset=Path("log.csv"), epochs=5)``.
    ``config_files`` are YAML files under those, ``set_args`` ``"key=value"`` strings over them.
    """
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"config: expected a dict of settings, got {type(config).__name__}")
    if output_dir is not None and not isinstance(output_dir, (str, os.PathLike)):
        raise ConfigError(f"output_dir: expected a path, got {output_dir!r}")
    if isinstance(set_args, str):
        set_args = [set_args]
    if not isinstance(set_args, Iterable) or not all(isinstance(a, str) for a in set_args):
        raise ConfigError(f"set_args: expected 'key=value' strings, got {set_args!r}")
    merged, notices = load_config(
        config_files=_paths("config_files", config_files) if config_files else (),
        overrides={**(config or {}), **settings},
        set_args=list(set_args),
    )
    return run(merged, output_dir=output_dir, resume=boolean("resume", resume), notices=notices)
