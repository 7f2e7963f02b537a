"""``tim4rec recommend``: every user to CSV or Parquet, a file of users, one ad-hoc history."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.hardening.helpers import assert_clear_error, cli
from tim4rec.cli import main
from tim4rec.serving import Recommender


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_every_user_to_a_file(suffix, trained, tmp_path: Path, capsys):
    output = tmp_path / f"recs{suffix}"
    code, _ = cli(capsys, "recommend", trained["tim4rec"], "-k", "3", "--output", output, "--threads", "1")
    assert code == 0
    frame = pd.read_csv(output, dtype={"user": str, "item": str}) if suffix == ".csv" else pd.read_parquet(output)
    recommender = Recommender.load(trained["tim4rec"])
    assert frame["user"].nunique() == len(recommender.user_index) and (frame.groupby("user").size() == 3).all()
    user = frame["user"].iloc[0]
    expected = recommender.recommend(recommender.user_history(user), k=3)
    assert frame[frame["user"] == user]["item"].tolist() == [i.item for i in expected.items]


def test_a_file_of_users_and_one_history(trained, tmp_path: Path, capsys):
    recommender = Recommender.load(trained["sasrec"])
    users = list(recommender.user_index)[:4]
    (tmp_path / "users.txt").write_text("\n".join(users) + "\n\n")
    code, _ = cli(capsys, "recommend", trained["sasrec"], "--users", tmp_path / "users.txt", "-k", "2",
                  "--output", tmp_path / "some.csv")  # fmt: skip
    assert code == 0 and pd.read_csv(tmp_path / "some.csv", dtype={"user": str})["user"].unique().tolist() == users
    code = main(["recommend", str(trained["sasrec"]), "--history", '[{"item": "50", "time": 1}, ["1", 2]]', "-k", "2"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and len(answer["items"]) == 2 and answer["metadata"]["events"] == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--users", "nosuch.txt"], "no such file of user ids"),
        (["--output", "recs.json"], "expected a .csv or .parquet"),
        (["--history", "[{"], "--history: expected a JSON list"),
        (["--history", '[{"item": "50", "time": 5}, {"item": "1", "time": 4}]'], "before the previous event"),
        (["--history", '[{"item": "50", "time": 1e30}]'], "--history[0]: time is out of range"),
        (["--history", '[{"item": "50", "time": NaN}]'], "--history[0]: time is not a finite number"),
        (["--history", '["50", "1"]'], "--history[0]: expected (item id, unix time)"),
        (["--history", '{"item": "50", "time": 5}'], "--history: expected a list"),
        (["--history", '[{"item": "50", "time": 5}]', "-k", "0"], "k: expected a positive integer, got 0"),
        (["-k", "0"], "k: expected a positive integer, got 0"),
    ],
    ids=[
        "no file of users",
        "json output",
        "not JSON",
        "decreasing",
        "time 1e30",
        "time NaN",
        "bare ids",
        "a record",
        "k 0 with a history",
        "k 0 for every user",
    ],
)
def test_bad_arguments(args, message, trained, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clear_error(*cli(capsys, "recommend", trained["tim4rec"], *args), message)
