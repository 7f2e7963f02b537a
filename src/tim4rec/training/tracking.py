"""Run tracking: each epoch's loss, validation metrics, learning rate and timings, as TensorBoard event files
beside ``results.json`` (``tensorboard --logdir runs``) and, optionally, in MLflow.

``results.json`` stays the record the benchmarks read; trackers are views of the same numbers for the tools
researchers already watch. Scalars are named ``train/loss``, ``valid/ndcg@10``, ``test/ndcg@10``,
``optim/learning_rate``, ``time/train_seconds`` and so on, stepped by epoch (test: at the best epoch).
An epoch a limit cut part-way is logged under ``partial/`` (``partial/valid/ndcg@10``): a resumed run
finishes that epoch and logs it whole under the usual names, so each curve has one point per epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from tim4rec.errors import ConfigError

#: the event files' folder inside a run's output folder
TENSORBOARD_DIR = "tensorboard"


class Tracker(Protocol):
    def epoch(self, epoch: int, scalars: dict[str, float]) -> None: ...

    def finish(self, epoch: int, scalars: dict[str, float]) -> None: ...


def epoch_scalars(entry: dict[str, Any], learning_rate: float) -> dict[str, float]:
    """The scalars of one epoch's history entry (``results.json``'s ``epochs`` item)."""
    scalars = {"train/loss": entry["loss"], "optim/learning_rate": learning_rate,
               "time/train_seconds": entry["train_seconds"], "time/valid_seconds": entry["valid_seconds"],
               "time/samples_per_second": entry["samples_per_second"]}  # fmt: skip
    scalars.update({f"valid/{name}": value for name, value in entry["valid"].items()})
    return scalars


class TensorBoardTracker:
    """Event files in ``folder`` (a resumed run adds a new file; TensorBoard reads them together)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError(
                f"tensorboard: the tensorboard package is missing ({error}); set tensorboard=false"
            ) from None
        self.writer = SummaryWriter(log_dir=str(folder))

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, epoch)
        self.writer.flush()

    def finish(self, epoch: int, scalars: dict[str, float]) -> None:
        self.epoch(epoch, scalars)
        self.writer.close()


class MLflowTracker:
    """An MLflow run (the tracking URI from ``MLFLOW_TRACKING_URI``, else MLflow's default ``./mlruns``) named after
    the output folder, with the run's settings as parameters."""

    def __init__(self, name: str, parameters: dict[str, Any]):
        try:
            import mlflow
        except ImportError:
            raise ConfigError("mlflow: true needs the mlflow package (pip install mlflow)") from None
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=name)
        mlflow.log_params({key: str(value)[:500] for key, value in parameters.items()})

    def epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        self.mlflow.log_metrics({name.replace("@", "_at_"): value for name, value in scalars.items()}, step=epoch)

    def finish(self, epoch: int, scalars: dict[str, float]) -> None:
        self.epoch(epoch, scalars)
        self.mlflow.end_run()


class Trackers:
    """The trackers a run's settings ask for, called together."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    @classmethod
    def for_run(cls, output_dir: Path, *, tensorboard: bool, mlflow: bool, parameters: dict[str, Any]) -> Trackers:
        trackers: list[Tracker] = []
        if tensorboard:
            trackers.append(TensorBoardTracker(output_dir / TENSORBOARD_DIR))
        if mlflow:
            trackers.append(MLflowTracker(str(output_dir), parameters))
        return cls(trackers)

    def epoch(self, epoch: int, entry: dict[str, Any], learning_rate: float) -> None:
        prefix = "partial/" if entry.get("partial") else ""
        scalars = {prefix + name: value for name, value in epoch_scalars(entry, learning_rate).items()}
        for tracker in self.trackers:
            tracker.epoch(epoch, scalars)

    def finish(self, best_epoch: int, test: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.finish(best_epoch, {f"test/{name}": value for name, value in test.items()})
