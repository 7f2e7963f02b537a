"""``tim4rec tune`` on a tiny synthetic dataset: trials chosen on validation with test read once, a killed
tuning resumed to the end, a search space with mistakes named, a study of another search refused."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tim4rec.errors import ConfigError
from tim4rec.training.tuning import TuneOptions, load_space, tune

SETTINGS = ("hidden_size=16", "n_heads=2", "inner_size=32", "n_layers=1", "MAX_ITEM_LIST_LENGTH=10",
            "train_batch_size=64", "epochs=3", "threads=1", "tensorboard=false")  # fmt: skip
SPACE = """learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
hidden_dropout_prob: {type: categorical, choices: [0.1, 0.3]}
"""


def options(dataset: Path, folder: Path, space: Path, trials: int = 3, **extra) -> TuneOptions:
    return TuneOptions(model="sasrec", dataset=str(dataset), space=str(space), trials=trials, study_dir=str(folder),
                       set_args=SETTINGS, **extra)  # fmt: skip


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def test_trials_read_validation_only_and_the_best_is_tested_once(synthetic_inter: Path, tmp_path: Path, space: Path):
    best = tune(options(synthetic_inter, tmp_path / "study", space))
    trials = sorted((tmp_path / "study" / "trials").glob("trial-*"))
    assert len(trials) == 3
    for folder in trials:  # no trial read the test users
        results = json.loads((folder / "results.json").read_text())
        assert results["test"] is None and results["config"]["evaluate_test"] is False
    chosen = json.loads((tmp_path / "study" / "trials" / f"trial-{best['trial']:04d}" / "results.json").read_text())
    assert best["valid"] == pytest.approx(chosen["best_valid"]["ndcg@10"])
    assert best["valid"] == max(
        json.loads(t.joinpath("results.json").read_text())["best_valid"]["ndcg@10"] for t in trials
    )
    assert (
        set(best["test"]) >= {"ndcg@10", "hit@10"}
        and json.loads((tmp_path / "study" / "best.json").read_text()) == best
    )
    table = (tmp_path / "study" / "trials.md").read_text()
    assert "| trial | state | valid score | epochs | s | learning_rate | hidden_dropout_prob |" in table
    assert (tmp_path / "study" / "trials.png").stat().st_size > 0
    again = tune(options(synthetic_inter, tmp_path / "study", space))  # nothing left to do: the same answer
    assert again == best


def test_a_killed_tuning_resumes_and_finishes_the_study(synthetic_inter: Path, tmp_path: Path, space: Path):
    folder = tmp_path / "study"
    command = [sys.executable, "-m", "tim4rec", "tune", "--model", "sasrec", "--dataset", str(synthetic_inter),
               "--space", str(space), "--trials", "4", "--study-dir", str(folder), "--heartbeat", "1"]  # fmt: skip
    command += [arg for setting in SETTINGS for arg in ("--set", setting)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(folder.glob("trials/trial-0001/results.json")):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # in the second trial
    process.wait()
    with sqlite3.connect(folder / "study.db") as db:
        states = [state for (state,) in db.execute("SELECT state FROM trials")]
    assert states.count("COMPLETE") + states.count("PRUNED") < 4
    time.sleep(2.5)  # the killed trial's heartbeat goes stale
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(folder / "study.db") as db:
        states = [state for (state,) in db.execute("SELECT state FROM trials")]
    assert states.count("COMPLETE") + states.count("PRUNED") == 4 and "RUNNING" not in states
    assert "Best: trial" in done.stdout and (folder / "best.json").exists()


def test_another_search_in_the_same_folder_is_refused(synthetic_inter: Path, tmp_path: Path, space: Path):
    tune(options(synthetic_inter, tmp_path / "study", space, trials=1))
    other = tmp_path / "other.yaml"
    other.write_text("learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2}\n")
    with pytest.raises(ConfigError, match="holds a study of another search"):
        tune(options(synthetic_inter, tmp_path / "study", other, trials=1))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("lr: 3", "lr: expected {type: float|int|categorical"),
        ("lr: {type: float, low: 1, high: 0}", "lr: expected numbers low <= high"),
        ("lr: {type: float, low: 0, high: 1, log: true}", "lr: a log range needs low > 0"),
        ("d: {type: categorical, choices: []}", "d: a categorical setting needs a non-empty list"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_space_mistakes_are_named(text: str, fragment: str, tmp_path: Path):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"{path}: .*"):
        load_space(path)
    with pytest.raises(ConfigError) as error:
        load_space(path)
    assert fragment in str(error.value)
