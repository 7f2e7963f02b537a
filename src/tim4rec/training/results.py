"""The training loop's state and a run's results, typed.

:class:`TrainingState` is what ``checkpoint.pt`` stores of the loop (as plain data, :meth:`TrainingState.to_dict`)
and ``--resume`` restores. :class:`RunResults` is ``results.json``: its fields are the file's keys in the file's
order, and :meth:`RunResults.write` / :meth:`RunResults.read` are where the file is written and read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tim4rec.errors import Tim4RecError
from tim4rec.io.files import write_json_atomic


@dataclass
class TrainingState:
    """Where the loop stands; every field survives a checkpoint."""

    #: the last complete epoch (0 before the first)
    epoch: int = 0
    #: optimiser steps taken, over all epochs
    step: int = 0
    #: seconds spent training and validating, over all sessions of the run
    elapsed: float = 0.0
    #: the best validation score (``valid_metric``) so far
    best_score: float = -math.inf
    best_epoch: int | None = None
    #: the validation metrics of the best epoch
    best_valid: dict[str, float] | None = None
    epochs_since_best: int = 0
    #: one dict per epoch: loss, steps, seconds, validation metrics, whether a limit cut it short
    history: list[dict[str, Any]] = field(default_factory=list)
    #: why training stopped (``epochs``, ``early_stopping``, ``max_steps``, ``time_budget``, ``diverged``, ...);
    #: None while it runs
    stopped_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The state as the plain dict ``checkpoint.pt`` stores."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        """The state of a checkpoint's dict (:meth:`to_dict`)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def epoch_wall_seconds(entry: dict[str, Any]) -> float:
    """Wall seconds an epoch of ``results.json``'s history cost: training, validation, and the validations of its
    part-way stops that a resumed run dropped (``dropped_valid_seconds``)."""
    return entry["train_seconds"] + entry.get("valid_seconds", 0.0) + entry.get("dropped_valid_seconds", 0.0)


#: the keys of results.json written only once set (the test users' ranks, the metrics with seen items removed)
OPTIONAL = ("test_ranks", "test_seen_removed", "test_seen_removed_ranks", "test_gap0", "test_gap0_ranks")


@dataclass
class RunResults:
    """A run's ``results.json``; each field is one key, in the file's order."""

    #: ``running``, ``interrupted``, ``failed`` (the loss diverged) or ``finished``
    status: str
    model: str
    dataset: str
    #: every setting of the run
    config: dict[str, Any]
    config_files: list[str]
    notices: list[str]
    dataset_stats: dict[str, Any]
    #: how each user's events were sorted by time: ``exact`` (int64 seconds) or ``recbole`` (float32, as RecBole)
    data_order: str
    #: the valid/test split, in words (``leave-one-out``, ...)
    split: str
    #: the training regime (``causal`` or ``prefix``)
    regime: str
    #: the training targets each regime would have
    train_targets: dict[str, int]
    train_samples: int
    rows_per_batch: int
    evaluated_users: int
    seed: int
    #: processes trained together: the global batch is train_batch_size x processes
    processes: int
    device: str
    threads: int
    flush_denormal: bool
    reuse_memory: bool
    compiled: bool
    #: the path each scan took (:mod:`tim4rec.ops.kernels`)
    kernels: dict[str, str]
    n_parameters: int
    #: the per-epoch history (:attr:`TrainingState.history`)
    epochs: list[dict[str, Any]]
    epochs_run: int
    steps: int
    #: mean training seconds of the epochs no limit cut short (None without one)
    seconds_per_epoch: float | None
    elapsed_seconds: float
    best_epoch: int | None
    best_valid: dict[str, float] | None
    #: the validation metric that picks the best epoch
    valid_metric: str
    stopped_by: str | None
    #: the best epoch's test metrics (None until the run finishes)
    test: dict[str, float] | None
    #: the process's peak resident memory, MiB
    peak_rss_mib: float | None
    versions: dict[str, str]
    machine: dict[str, Any]
    output_dir: str
    #: per test user, the target's rank: ``{"users": [...], "ranks": [...]}``
    test_ranks: dict[str, list] | None = None
    #: the test metrics when no item the user already met is ranked (runs with mask_history off)
    test_seen_removed: dict[str, float] | None = None
    #: the test ranks under that protocol, as ``test_ranks``
    test_seen_removed_ranks: dict[str, list] | None = None
    #: a model that reads the request time: ``test`` reads the held-out event's time; these metrics and
    #: ranks are the same model's with the request time set to the last event's (a gap of 0)
    test_gap0: dict[str, float] | None = None
    test_gap0_ranks: dict[str, list] | None = None
    #: keys of a file that are no field (added by other tools), written back after the fields
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON dict: the fields in order (the optional ones only when set), then :attr:`extra`."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for name in OPTIONAL:
            if data[name] is None:
                del data[name]
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResults:
        """The results of a ``results.json`` dict; keys that are no field go to :attr:`extra`."""
        if not isinstance(data, dict):
            raise Tim4RecError(f"expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls) if f.name != "extra"]
        missing = [name for name in names if name not in data and name not in OPTIONAL]
        if missing:
            raise Tim4RecError(f"it lacks {', '.join(missing)}")
        known = {name: data[name] for name in names if name in data}
        return cls(**known, extra={key: value for key, value in data.items() if key not in known})

    def write(self, path: str | Path) -> None:
        """Write ``results.json`` atomically."""
        write_json_atomic(self.to_dict(), path)

    @classmethod
    def read(cls, path: str | Path) -> RunResults:
        """Read a ``results.json``; a clear error for a file that is not one."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, Tim4RecError) as error:
            raise Tim4RecError(f"{path}: not a run's results.json ({error})") from None
