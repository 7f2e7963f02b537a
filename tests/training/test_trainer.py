import json
import os
import signal
from pathlib import Path

import pytest
import torch

import tim4rec
from tim4rec.config import load_config
from tim4rec.evaluation.metrics import metrics_from_ranks
from tim4rec.runtime import runtime_settings
from tim4rec.training.checkpoint import load_checkpoint
from tim4rec.training.experiment import build_experiment
from tim4rec.training.results import epoch_wall_seconds
from tim4rec.training.trainer import Trainer

TINY = {
    "model": "sasrec",
    "hidden_size": 16,
    "n_heads": 2,
    "inner_size": 32,
    "n_layers": 1,
    "MAX_ITEM_LIST_LENGTH": 10,
    "train_batch_size": 64,
    "epochs": 3,
    "stopping_step": 10,
    "show_progress": False,
    "threads": 1,
    "seed": 7,
}


def test_one_epoch_on_a_real_slice(ml100k_slice: Path, tmp_path: Path):
    results = tim4rec.train(
        {**TINY, "dataset": str(ml100k_slice), "epochs": 1, "train_regime": "prefix"}, output_dir=tmp_path / "run"
    )
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["status"] == "finished"
    assert saved["test"] == results["test"]
    assert set(results["test"]) == {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (10, 20, 50)}
    assert results["train_targets"]["prefix"] == results["train_targets"]["causal"] == results["train_samples"]
    assert results["regime"] == "prefix" and results["data_order"] == "exact"
    assert results["dataset_stats"]["users"] == results["evaluated_users"]
    assert len(results["epochs"]) == 1 and results["epochs"][0]["loss"] > 0
    assert results["best_epoch"] == 1 and results["stopped_by"] == "epochs"
    assert {"torch", "tim4rec", "numpy"} <= set(results["versions"])
    assert (tmp_path / "run" / "best.pt").exists() and (tmp_path / "run" / "checkpoint.pt").exists()


def test_test_metrics_also_with_seen_items_removed(ml100k_slice: Path, tmp_path: Path):
    """Beside the plain test metrics, the protocol that never ranks an item the user already met (as the
    RecSys 2023 SASRec figures are computed): equal to evaluating best.pt that way, and never lower."""
    from tim4rec.evaluation import evaluate_saved_model

    results = tim4rec.train({**TINY, "dataset": str(ml100k_slice), "epochs": 1}, output_dir=tmp_path / "run")
    removed = results["test_seen_removed"]
    assert removed == evaluate_saved_model(tmp_path / "run" / "best.pt", mask_history=True)["metrics"]
    assert all(removed[name] >= results["test"][name] for name in results["test"])
    assert removed["hit@10"] > results["test"]["hit@10"]  # the model ranks seen items high: masking matters
    ranks = results["test_seen_removed_ranks"]
    assert ranks["users"] == results["test_ranks"]["users"]
    assert all(a <= b for a, b in zip(ranks["ranks"], results["test_ranks"]["ranks"]))  # per user, never worse
    assert metrics_from_ranks(torch.tensor(ranks["ranks"]), (10, 20, 50), ("hit", "ndcg", "mrr")) == removed


def _fit(dataset: Path, output: Path, *, resume: bool = False, hook=None, **extra) -> dict:
    """Train as ``tim4rec train`` does, with ``hook(epoch)`` called after every epoch."""
    config, notices = load_config(overrides={**TINY, "dataset": str(dataset), **extra})
    with runtime_settings(threads=config.threads, flush_denormal=config.flush_denormal) as runtime:
        trainer = Trainer(build_experiment(config, notices), output, runtime=runtime)
        trainer.epoch_end_hook = hook
        return trainer.fit(resume=resume)


class Killed(Exception):
    pass


def test_resume_after_a_kill_gives_the_same_results(synthetic_inter: Path, tmp_path: Path):
    uninterrupted = _fit(synthetic_inter, tmp_path / "a")

    def kill_after(epoch: int) -> None:
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        _fit(synthetic_inter, tmp_path / "b", hook=kill_after)
    resumed = _fit(synthetic_inter, tmp_path / "b", resume=True)
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in uninterrupted["epochs"]]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in uninterrupted["epochs"]]
    assert resumed["test"] == uninterrupted["test"]
    assert resumed["best_epoch"] == uninterrupted["best_epoch"]


def _scripted_validation(monkeypatch, scores: list[float]) -> None:
    """Validation NDCG@10 follows ``scores`` (epoch by epoch, across resumes; the test split is left alone)."""
    real = Trainer._evaluate

    def scripted(self, samples, *args, **kwargs):
        metrics = real(self, samples, *args, **kwargs)
        if samples is self.valid_samples:
            metrics = {**metrics, "ndcg@10": scores[self.state.epoch]}  # state.epoch: the epochs before this one
        return metrics

    monkeypatch.setattr(Trainer, "_evaluate", scripted)


def test_the_learning_rate_decays_after_epochs_without_a_better_validation(synthetic_inter, tmp_path, monkeypatch):
    """lr_decay_patience 2: halved after the second epoch in a row with no better validation, counted anew after
    a decay; a killed and resumed run decays at the same epochs (the schedule is in the checkpoint)."""
    _scripted_validation(monkeypatch, [0.1, 0.2, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3])
    settings = {"epochs": 9, "lr_decay_patience": 2, "learning_rate": 1e-3}
    uninterrupted = _fit(synthetic_inter, tmp_path / "a", **settings)
    rates = [entry["learning_rate"] for entry in uninterrupted["epochs"]]
    assert rates == pytest.approx([1e-3] * 4 + [5e-4] * 4 + [2.5e-4])

    def kill_after(epoch: int) -> None:
        if epoch == 3:
            raise Killed

    with pytest.raises(Killed):
        _fit(synthetic_inter, tmp_path / "b", hook=kill_after, **settings)
    resumed = _fit(synthetic_inter, tmp_path / "b", resume=True, **settings)
    assert [e["learning_rate"] for e in resumed["epochs"]] == rates
    assert [e["loss"] for e in resumed["epochs"]] == [e["loss"] for e in uninterrupted["epochs"]]
    fixed = _fit(synthetic_inter, tmp_path / "c", epochs=9)  # without it, the rate never moves
    assert {entry["learning_rate"] for entry in fixed["epochs"]} == {1e-3}


def test_an_existing_run_is_never_overwritten(synthetic_inter: Path, tmp_path: Path):
    _fit(synthetic_inter, tmp_path / "a", epochs=1)
    before = (tmp_path / "a" / "results.json").read_bytes()
    with pytest.raises(tim4rec.errors.Tim4RecError, match="already holds a run"):
        _fit(synthetic_inter, tmp_path / "a", epochs=1)
    assert (tmp_path / "a" / "results.json").read_bytes() == before


def test_resume_refuses_a_different_experiment(synthetic_inter: Path, tmp_path: Path):
    _fit(synthetic_inter, tmp_path / "a", epochs=1)
    with pytest.raises(tim4rec.errors.ConfigError, match="learning_rate"):
        _fit(synthetic_inter, tmp_path / "a", epochs=2, learning_rate=0.5, resume=True)
    more = _fit(synthetic_inter, tmp_path / "a", epochs=2, resume=True)  # a limit may change
    assert more["epochs_run"] == 2


def test_limits_stop_cleanly_and_evaluate_the_best(synthetic_inter: Path, tmp_path: Path):
    by_steps = _fit(synthetic_inter, tmp_path / "s", max_steps=3, train_batch_size=8, train_regime="prefix")
    assert by_steps["stopped_by"] == "max_steps" and by_steps["steps"] == 3
    assert by_steps["epochs"][-1]["partial"] and by_steps["test"] is not None
    by_time = _fit(synthetic_inter, tmp_path / "t", time_budget=1e-9)
    assert by_time["stopped_by"] == "time_budget" and by_time["steps"] == 1


def _signal_at_steps(monkeypatch, steps: dict[int, int]) -> None:
    """Send this process ``steps[n]`` SIGINTs as training step n (counted over the run, from 1) begins."""
    step, count = Trainer._step, [0]

    def signalled_step(self, batch):
        count[0] += 1
        for _ in range(steps.get(count[0], 0)):
            os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the step starts
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", signalled_step)


def test_ctrl_c_in_a_step_saves_the_epochs_place(synthetic_inter: Path, tmp_path: Path, monkeypatch):
    """Ctrl-C during step 3 of epoch 2: the step ends, the checkpoint keeps the epoch's place (no validation of
    the part), and the resumed run trains what an uninterrupted one does."""
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix", "lr_decay_patience": 1}
    uninterrupted = _fit(synthetic_inter, tmp_path / "a", **settings)
    per_epoch = uninterrupted["epochs"][0]["steps"]
    _signal_at_steps(monkeypatch, {per_epoch + 3: 1})
    with pytest.raises(KeyboardInterrupt):
        _fit(synthetic_inter, tmp_path / "b", **settings)
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stopped = json.loads((tmp_path / "b" / "results.json").read_text())
    assert stopped["status"] == "interrupted" and [e["steps"] for e in stopped["epochs"]] == [per_epoch]
    checkpoint = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert checkpoint["state"]["epoch"] == 1 and checkpoint["state"]["step"] == per_epoch + 3
    assert {k: checkpoint["unfinished_epoch"]["position"][k] for k in ("epoch", "steps")} == {"epoch": 2, "steps": 3}
    resumed = _fit(synthetic_inter, tmp_path / "b", resume=True, **settings)
    for key in ("loss", "valid", "steps", "learning_rate", "partial"):
        assert [e[key] for e in resumed["epochs"]] == [e[key] for e in uninterrupted["epochs"]], key
    assert resumed["epochs"][1]["continued_at_step"] == 4 and resumed["test"] == uninterrupted["test"]


def test_ctrl_c_at_the_step_a_limit_stops_keeps_the_limits_epoch(synthetic_inter: Path, tmp_path: Path, monkeypatch):
    """Ctrl-C in the step where max_steps is reached: the part is validated and checkpointed as the limit has it,
    then the run stops; resumed, it ends as the uninterrupted cut run did."""
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix"}
    per_epoch = _fit(synthetic_inter, tmp_path / "a", **{**settings, "epochs": 1})["epochs"][0]["steps"]
    cut = _fit(synthetic_inter, tmp_path / "cut", max_steps=per_epoch + 2, **settings)
    _signal_at_steps(monkeypatch, {per_epoch + 2: 1})
    with pytest.raises(KeyboardInterrupt):
        _fit(synthetic_inter, tmp_path / "b", max_steps=per_epoch + 2, **settings)
    monkeypatch.undo()
    stopped = json.loads((tmp_path / "b" / "results.json").read_text())
    assert stopped["status"] == "interrupted" and [e["partial"] for e in stopped["epochs"]] == [False, True]
    resumed = _fit(synthetic_inter, tmp_path / "b", max_steps=per_epoch + 2, resume=True, **settings)
    assert resumed["stopped_by"] == "max_steps" and resumed["test"] == cut["test"]
    assert [e["valid"] for e in resumed["epochs"]] == [e["valid"] for e in cut["epochs"]]


def test_ctrl_c_in_a_reopened_first_epoch_leaves_no_best_file_of_its_part(
    synthetic_inter: Path, tmp_path: Path, monkeypatch
):
    """A limit cut epoch 1 part-way, so best.pt held the part; Ctrl-C in the reopened epoch saves the state from
    before that validation (no best epoch yet), and best.pt goes with it; the resumed run writes it again."""
    settings = {"epochs": 2, "train_batch_size": 8, "train_regime": "prefix"}
    folder = tmp_path / "b"
    _fit(synthetic_inter, folder, max_steps=2, **settings)
    assert (folder / "best.pt").exists()
    _signal_at_steps(monkeypatch, {1: 1})  # the first step of the resumed stretch
    with pytest.raises(KeyboardInterrupt):
        _fit(synthetic_inter, folder, resume=True, **settings)
    monkeypatch.undo()
    assert load_checkpoint(folder / "checkpoint.pt")["state"]["best_epoch"] is None
    assert not (folder / "best.pt").exists()
    assert (
        _fit(synthetic_inter, folder, resume=True, **settings)["best_epoch"] in (1, 2) and (folder / "best.pt").exists()
    )


def test_a_kill_before_the_parts_best_file_is_removed_is_set_right_on_resume(
    synthetic_inter: Path, tmp_path: Path, monkeypatch
):
    """Killed after the interrupt's checkpoint (no best epoch) but before best.pt went: resuming removes the part's
    best.pt, so no file claims a best epoch the state does not have."""
    settings = {"epochs": 2, "train_batch_size": 8, "train_regime": "prefix"}
    folder = tmp_path / "b"
    _fit(synthetic_inter, folder, max_steps=2, **settings)
    reconcile, calls = Trainer._reconcile_best, []

    def killed_after_the_checkpoint(self):
        calls.append(self.state.best_epoch)
        if self.state.best_epoch is None:  # the interrupt's place is checkpointed; the kill comes now
            raise Killed
        reconcile(self)

    _signal_at_steps(monkeypatch, {1: 1})
    monkeypatch.setattr(Trainer, "_reconcile_best", killed_after_the_checkpoint)
    with pytest.raises(Killed):
        _fit(synthetic_inter, folder, resume=True, **settings)
    monkeypatch.undo()
    assert calls == [1, None] and (folder / "best.pt").exists()  # the part's weights, left by the kill
    assert load_checkpoint(folder / "checkpoint.pt")["state"]["best_epoch"] is None
    config, notices = load_config(overrides={**TINY, "dataset": str(synthetic_inter), **settings})
    with runtime_settings(threads=config.threads, flush_denormal=config.flush_denormal) as runtime:
        Trainer(build_experiment(config, notices), folder, runtime=runtime)._resume()
    assert not (folder / "best.pt").exists() and not (folder / "best-full-epochs.pt").exists()


def test_a_second_ctrl_c_stops_at_once(synthetic_inter: Path, tmp_path: Path, monkeypatch):
    """Two Ctrl-Cs: the second raises inside the step, so the checkpoint stays at the last complete epoch."""
    settings = {"epochs": 2, "train_batch_size": 8, "train_regime": "prefix"}
    per_epoch = _fit(synthetic_inter, tmp_path / "a", **{**settings, "epochs": 1})["epochs"][0]["steps"]
    _signal_at_steps(monkeypatch, {per_epoch + 2: 2})
    with pytest.raises(KeyboardInterrupt):
        _fit(synthetic_inter, tmp_path / "b", **settings)
    checkpoint = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert checkpoint["state"]["step"] == per_epoch and checkpoint["unfinished_epoch"] is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_epoch_a_limit_stopped_is_finished_exactly_on_resume(synthetic_inter: Path, tmp_path: Path):
    """Cut twice inside epoch 2 and resumed, the run trains the batches, dropout and learning rates an
    uninterrupted run does: the same losses, validations and test; the partial validations are dropped."""
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix", "lr_decay_patience": 1}
    uninterrupted = _fit(synthetic_inter, tmp_path / "a", **settings)
    per_epoch = uninterrupted["epochs"][0]["steps"]
    assert per_epoch > 6
    cut = _fit(synthetic_inter, tmp_path / "b", max_steps=per_epoch + 2, **settings)
    assert cut["stopped_by"] == "max_steps" and cut["epochs"][-1]["partial"] and cut["epochs"][-1]["steps"] == 2
    cut_again = _fit(synthetic_inter, tmp_path / "b", max_steps=per_epoch + 5, resume=True, **settings)
    assert [e["steps"] for e in cut_again["epochs"]] == [per_epoch, 5]  # the first partial entry is gone
    assert cut_again["epochs"][-1]["continued_at_step"] == 3
    resumed = _fit(synthetic_inter, tmp_path / "b", resume=True, **settings)
    for key in ("loss", "valid", "steps", "learning_rate", "partial"):
        assert [e[key] for e in resumed["epochs"]] == [e[key] for e in uninterrupted["epochs"]], key
    assert resumed["epochs"][1]["continued_at_step"] == 6 and "continued_at_step" not in resumed["epochs"][2]
    # the two dropped validations' seconds stay in the history: its epochs add up to the run's elapsed seconds
    assert resumed["epochs"][1]["dropped_valid_seconds"] > 0
    assert sum(map(epoch_wall_seconds, resumed["epochs"])) == pytest.approx(resumed["elapsed_seconds"])
    assert resumed["test"] == uninterrupted["test"] and resumed["best_epoch"] == uninterrupted["best_epoch"]
    assert resumed["steps"] == uninterrupted["steps"]


def _validation_by_call(monkeypatch, partial: list[float], full: list[float]) -> None:
    """Validation NDCG@10 is ``partial[i]`` for the i-th part-way validation and ``full[e - 1]`` for complete
    epoch e."""
    real, partial = Trainer._evaluate, iter(partial)

    def scripted(self, samples, *args, **kwargs):
        metrics = real(self, samples, *args, **kwargs)
        if samples is self.valid_samples:
            score = next(partial) if self._unfinished_epoch is not None else full[self.state.epoch]
            metrics = {**metrics, "ndcg@10": score}
        return metrics

    monkeypatch.setattr(Trainer, "_evaluate", scripted)


def test_a_part_way_best_sets_the_best_epoch_aside_until_its_epoch_finishes(synthetic_inter, tmp_path, monkeypatch):
    """A partial epoch that validates best is what a run ending there tests; resumed, the epoch it belongs to is
    finished and the best complete epoch's weights are best.pt again."""
    from tim4rec.io import load_saved_model

    _validation_by_call(monkeypatch, partial=[0.9], full=[0.5, 0.1, 0.2])
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix"}
    uninterrupted = _fit(synthetic_inter, tmp_path / "a", **settings)
    assert uninterrupted["best_epoch"] == 1
    folder = tmp_path / "b"
    cut = _fit(synthetic_inter, folder, max_steps=uninterrupted["epochs"][0]["steps"] + 2, **settings)
    assert cut["best_epoch"] == 2 and cut["epochs"][-1]["partial"]
    assert load_saved_model(folder / "best.pt").epoch == 2
    assert load_saved_model(folder / "best-full-epochs.pt").epoch == 1
    resumed = _fit(synthetic_inter, folder, resume=True, **settings)
    assert resumed["best_epoch"] == 1 and resumed["test"] == uninterrupted["test"]
    assert not (folder / "best-full-epochs.pt").exists()
    best, reference = load_saved_model(folder / "best.pt"), load_saved_model(tmp_path / "a" / "best.pt")
    assert best.epoch == 1
    assert all(torch.equal(best.model_state[k], reference.model_state[k]) for k in reference.model_state)


def test_a_second_cut_in_the_same_epoch_that_is_not_best_gives_best_pt_back(synthetic_inter, tmp_path, monkeypatch):
    """Cut at a part-way best, resumed and cut again in the same epoch below the best complete epoch: a run that
    ends there tests the best complete epoch, and best.pt holds it."""
    from tim4rec.io import load_saved_model

    _validation_by_call(monkeypatch, partial=[0.9, 0.3], full=[0.5, 0.1, 0.2])
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix"}
    reference = _fit(synthetic_inter, tmp_path / "a", **{**settings, "epochs": 1})
    per_epoch, folder = reference["epochs"][0]["steps"], tmp_path / "b"
    _fit(synthetic_inter, folder, max_steps=per_epoch + 2, **settings)
    again = _fit(synthetic_inter, folder, max_steps=per_epoch + 4, resume=True, **settings)
    assert again["best_epoch"] == 1 and again["test"] == reference["test"]
    assert load_saved_model(folder / "best.pt").epoch == 1 and not (folder / "best-full-epochs.pt").exists()


def test_a_kill_between_checkpoint_and_best_files_is_set_right_on_resume(synthetic_inter, tmp_path, monkeypatch):
    """Killed after the finished epoch's checkpoint but before best.pt was given back, a resumed run whose limit is
    spent tests the checkpoint's best epoch, not the part-way weights left in best.pt."""
    from tim4rec.io import load_saved_model

    _validation_by_call(monkeypatch, partial=[0.9], full=[0.5, 0.1, 0.2])
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix"}
    reference = _fit(synthetic_inter, tmp_path / "a", **{**settings, "epochs": 1})
    per_epoch, folder = reference["epochs"][0]["steps"], tmp_path / "b"
    _fit(synthetic_inter, folder, max_steps=per_epoch + 2, **settings)

    def killed(self, improved):
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_settle_best", killed)
        with pytest.raises(Killed):
            _fit(synthetic_inter, folder, max_steps=2 * per_epoch, resume=True, **settings)
    assert load_saved_model(folder / "best.pt").epoch == 2  # the part-way weights, left by the kill
    ended = _fit(synthetic_inter, folder, max_steps=2 * per_epoch, resume=True, **settings)
    assert ended["best_epoch"] == 1 and ended["test"] == reference["test"]
    assert load_saved_model(folder / "best.pt").epoch == 1 and not (folder / "best-full-epochs.pt").exists()


def test_ctrl_c_in_a_continued_epoch_reports_what_the_checkpoint_holds(synthetic_inter, tmp_path, monkeypatch):
    """Interrupted while it finishes a cut epoch, the run's results.json keeps the partial epoch and its best, as the
    checkpoint and best.pt do, instead of the state reopened for training."""
    _validation_by_call(monkeypatch, partial=[0.9], full=[0.5, 0.1, 0.2])
    settings = {"epochs": 3, "train_batch_size": 8, "train_regime": "prefix"}
    folder = tmp_path / "b"
    cut = _fit(synthetic_inter, folder, max_steps=5, **settings)
    assert cut["best_epoch"] == 1 and cut["epochs"][-1]["partial"]

    def interrupted(self, batch):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fit(synthetic_inter, folder, resume=True, **settings)
    saved = json.loads((folder / "results.json").read_text())
    assert saved["status"] == "interrupted" and saved["best_epoch"] == 1 and saved["epochs"][-1]["partial"]
    assert saved["epochs"] == cut["epochs"]


def test_early_stopping_reports_test_at_the_best_epoch(synthetic_inter: Path, tmp_path: Path):
    results = _fit(synthetic_inter, tmp_path / "e", epochs=30, stopping_step=2, learning_rate=0.05)
    epochs = results["epochs"]
    best = max(epochs, key=lambda e: e["valid"]["ndcg@10"])
    assert results["best_epoch"] == best["epoch"]
    if results["stopped_by"] == "early_stopping":
        assert len(epochs) == results["best_epoch"] + 2
    saved = torch.load(tmp_path / "e" / "best.pt", weights_only=True)
    assert saved["epoch"] == results["best_epoch"]


@pytest.mark.parametrize("name", __import__("tim4rec.models", fromlist=["available"]).available())
def test_every_model_trains_one_epoch_on_a_real_slice(name: str, ml100k_slice: Path, tmp_path: Path):
    from tim4rec.models import model_defaults

    defaults = model_defaults(name)
    small = {
        "hidden_size": 16,
        "embedding_size": 16,
        "inner_size": 32,
        "n_heads": 2,
        "head_dim": 8,
        "d_state": 8,
        "num_layers": 1,
        "n_layers": 1,
    }
    config = {
        "model": name,
        "dataset": str(ml100k_slice),
        "epochs": 1,
        "MAX_ITEM_LIST_LENGTH": 10,
        "train_batch_size": 128,
        "show_progress": False,
        "threads": 1,
        **{k: v for k, v in small.items() if k in defaults},
    }
    results = tim4rec.train(config, output_dir=tmp_path / name)
    assert results["status"] == "finished" and results["epochs_run"] == 1
    assert 0.0 <= results["test"]["ndcg@10"] <= 1.0
    if name == "mostpop":  # counts, nothing to learn: one epoch, no steps
        assert results["steps"] == 0 and results["test"]["hit@50"] > 0
    else:
        assert results["epochs"][0]["loss"] > 0


def test_resuming_a_run_whose_limit_is_spent_trains_nothing(synthetic_inter: Path, tmp_path: Path):
    first = _fit(synthetic_inter, tmp_path / "m", max_steps=3, train_batch_size=8, train_regime="prefix")
    again = _fit(synthetic_inter, tmp_path / "m", max_steps=3, train_batch_size=8, train_regime="prefix", resume=True)
    assert again["steps"] == first["steps"] == 3
    assert again["epochs"] == first["epochs"] and again["test"] == first["test"]


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_setting_reaches_the_cpu(flush: bool, synthetic_inter: Path, tmp_path: Path):
    if flush and not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    denormal = torch.tensor([1e-39])  # below float32's smallest normal number, 1.18e-38
    seen = []
    results = _fit(
        synthetic_inter,
        tmp_path / "run",
        epochs=1,
        flush_denormal=flush,
        hook=lambda epoch: seen.append((denormal * 1.0).item() == 0.0),  # flushed: read as zero
    )
    assert results["flush_denormal"] is flush and seen == [flush]
    assert (denormal * 1.0).item() != 0.0  # back to PyTorch's default after fit


def test_temporal_split_from_the_config(synthetic_inter: Path, tmp_path: Path):
    results = _fit(synthetic_inter, tmp_path / "t", epochs=1, split="temporal", temporal_cut_quantile=0.8)
    assert results["split"].startswith("temporal split at") and results["status"] == "finished"
    assert 0 < results["evaluated_users"] <= results["dataset_stats"]["users"]


def test_samples_per_epoch_draws_prefix_samples_anew_each_epoch(synthetic_inter: Path, tmp_path: Path, monkeypatch):
    """An epoch of ``samples_per_epoch`` prefix samples drawn at random: each batch row is one of the prefix
    regime's (history, target) samples, no sample twice in an epoch, another draw the next epoch."""
    seen: list[list[tuple]] = []
    step = Trainer._step

    def recording(self, batch):
        rows = [
            (tuple(batch.item_seq[r, : int(batch.item_seq_len[r])].tolist()), int(batch.target[r]))
            for r in range(len(batch))
        ]
        seen[-1].extend(rows)
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", recording)
    config, notices = load_config(overrides={**TINY, "dataset": str(synthetic_inter), "train_regime": "prefix",
                                             "samples_per_epoch": 50, "epochs": 2})  # fmt: skip
    with runtime_settings(threads=1, flush_denormal=config.flush_denormal) as runtime:
        trainer = Trainer(build_experiment(config, notices), tmp_path / "run", runtime=runtime)
        trainer.epoch_end_hook = lambda epoch: seen.append([])
        seen.append([])
        results = trainer.fit()
        every = trainer.data.batch(trainer.train_samples, torch.arange(len(trainer.train_samples)))
    prefix = {
        (tuple(every.item_seq[r, : int(every.item_seq_len[r])].tolist()), int(every.target[r]))
        for r in range(len(every))
    }
    first, second = seen[0], seen[1]
    assert len(first) == len(second) == 50 < len(prefix) and results["epochs"][0]["steps"] == 1
    assert set(first) <= prefix and set(second) <= prefix and len(set(first)) == 50 and set(first) != set(second)


def test_a_run_that_reads_the_request_time_reports_both_protocols(synthetic_inter: Path, tmp_path: Path):
    """A TiM4Rec trained with request_time: test reads the held-out event's time, test_gap0 the same model
    told the last event's time; a quality report shows them in rows of their own."""
    from tim4rec.bench.quality_report import summarise

    tiny = {
        "model": "tim4rec",
        "hidden_size": 8,
        "head_dim": 4,
        "d_state": 4,
        "chunk_size": 4,
        "num_layers": 1,
        "request_time": True,
    }
    settings = {key: value for key, value in TINY.items() if key not in ("n_heads", "inner_size", "n_layers")}
    results = tim4rec.train(
        {**settings, **tiny, "dataset": str(synthetic_inter), "epochs": 2}, output_dir=tmp_path / "run"
    )
    assert set(results["test_gap0"]) == set(results["test"]) and len(results["test_gap0_ranks"]["ranks"]) == 30
    rows = summarise([{**results, "_run": "timed"}])
    assert [row["run"] for row in rows] == [
        "timed (reads the held-out event's time)",
        "timed (the same models at a gap of 0)",
    ]
    assert rows[1]["test_ndcg@10"] == results["test_gap0"]["ndcg@10"]
