"""Run tracking: TensorBoard event files beside results.json hold the same numbers, read back with
TensorBoard's own reader; tensorboard=false writes none; a resumed run continues the same curves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.test_trainer import Killed, _fit
from tim4rec.training.tracking import TENSORBOARD_DIR


def events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from every event file in ``folder``, in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            found.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return found


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from every event file in ``folder`` (the latest value of a repeated step)."""
    return {tag: dict(points) for tag, points in events(folder).items()}


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


def test_an_epoch_cut_part_way_is_logged_apart_from_the_whole_one(synthetic_inter: Path, tmp_path: Path):
    """A limit cuts epoch 2 part-way; its scalars go under partial/, and the resumed run logs epoch 2 whole under
    the usual names: one point per epoch and tag, the values of results.json."""
    settings = {"epochs": 2, "train_batch_size": 8, "train_regime": "prefix"}
    per_epoch = _fit(synthetic_inter, tmp_path / "one", **{**settings, "epochs": 1})["epochs"][0]["steps"]
    cut = _fit(synthetic_inter, tmp_path / "run", max_steps=per_epoch + 2, **settings)
    assert [e["partial"] for e in cut["epochs"]] == [False, True]
    resumed = _fit(synthetic_inter, tmp_path / "run", resume=True, **settings)
    logged = events(tmp_path / "run" / TENSORBOARD_DIR)
    for tag in ("train/loss", "valid/ndcg@10", "time/train_seconds"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag
    assert dict(logged["train/loss"]) == pytest.approx({n + 1: e["loss"] for n, e in enumerate(resumed["epochs"])})
    assert dict(logged["partial/train/loss"]) == pytest.approx({2: cut["epochs"][-1]["loss"]})
    assert [step for step, _ in logged["partial/valid/ndcg@10"]] == [2]
