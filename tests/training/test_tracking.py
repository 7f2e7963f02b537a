"""Run tracking: TensorBoard event files beside results.json hold the same numbers, read back with
TensorBoard's own reader; tensorboard=false writes none; a resumed run continues the same curves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.test_trainer import Killed, _fit
from tim4rec.training.tracking import TENSORBOARD_DIR


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file in ``folder`` (the latest value of a repeated step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, dict[int, float]] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, {}).update({e.step: e.value for e in accumulator.Scalars(tag)})
    return found


def test_the_event_files_hold_each_epoch_and_the_test_metrics(synthetic_inter: Path, tmp_path: Path):
    results = _fit(synthetic_inter, tmp_path / "run")
    logged = scalars(tmp_path / "run" / TENSORBOARD_DIR)
    epochs = results["epochs"]
    assert logged["train/loss"] == pytest.approx({n + 1: e["loss"] for n, e in enumerate(epochs)})
    assert logged["valid/ndcg@10"] == pytest.approx({n + 1: e["valid"]["ndcg@10"] for n, e in enumerate(epochs)})
    assert list(logged["optim/learning_rate"].values()) == pytest.approx(
        [results["config"]["learning_rate"]] * len(epochs)
    )
    assert logged["time/train_seconds"] == pytest.approx({n + 1: e["train_seconds"] for n, e in enumerate(epochs)})
    assert logged["test/ndcg@10"] == pytest.approx({results["best_epoch"]: results["test"]["ndcg@10"]})


def test_no_event_files_when_turned_off(synthetic_inter: Path, tmp_path: Path):
    _fit(synthetic_inter, tmp_path / "run", tensorboard=False)
    assert not (tmp_path / "run" / TENSORBOARD_DIR).exists()


def test_a_resumed_run_continues_the_curves(synthetic_inter: Path, tmp_path: Path):
    def kill_after(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        _fit(synthetic_inter, tmp_path / "run", hook=kill_after)
    results = _fit(synthetic_inter, tmp_path / "run", resume=True)
    logged = scalars(tmp_path / "run" / TENSORBOARD_DIR)
    assert sorted(logged["train/loss"]) == list(range(1, len(results["epochs"]) + 1))
    assert logged["train/loss"] == pytest.approx({n + 1: e["loss"] for n, e in enumerate(results["epochs"])})
