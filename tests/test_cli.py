"""The command line: one clear error line, non-zero exit, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_inter


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tim4rec", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "nosuch", "--dataset", "ml-100k"], "unknown model 'nosuch'"),
        (["train", "--model", "sasrec", "--dataset", "nosuchdata"], "neither a named dataset"),
        (
            ["train", "--model", "sasrec", "--dataset", "ml-100k", "--set", "bogus_key=1"],
            "unknown config key 'bogus_key'",
        ),
        (["data", "stats", "nosuch.inter"], "nor an existing file"),
        (["evaluate", "nosuch.pt"], "no such saved model"),
    ],
)
def test_errors_are_one_line(args, message, tmp_path: Path):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir())  # a failed command leaves nothing (no runs/<model>-<dataset>-seed<seed>)


def test_bad_files(tmp_path: Path):
    write_inter(tmp_path / "nots.inter", [("a", "x", 1)], header="user_id:token\titem_id:token\trating:float")
    write_inter(tmp_path / "badts.inter", [("a", "x", 1, "noon")])
    write_inter(tmp_path / "small.inter", [("a", "x", 1, 5), ("b", "y", 1, 6)])
    (tmp_path / "empty.inter").write_text("")
    for name, message in [
        ("nots.inter", "no column 'timestamp'"),
        ("badts.inter", "line 2: field 'timestamp' is not a number"),
        ("small.inter", "left no interactions"),
        ("empty.inter", "empty"),
    ]:
        done = run("data", "stats", str(tmp_path / name))
        assert done.returncode == 2, name
        assert message in done.stderr and name in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_stats_and_train_and_evaluate(synthetic_inter: Path, tmp_path: Path):
    done = run("data", "stats", str(synthetic_inter))
    assert done.returncode == 0 and "users        30" in done.stdout
    output = tmp_path / "out"
    done = run(
        "train",
        "--model",
        "sasrec",
        "--dataset",
        str(synthetic_inter),
        "--output",
        str(output),
        "--set",
        "epochs=1",
        "--set",
        "hidden_size=8",
        "--set",
        "n_heads=2",
        "--set",
        "MAX_ITEM_LIST_LENGTH=8",
        "--set",
        "threads=1",
    )
    assert done.returncode == 0, done.stderr
    assert "| test |" in done.stdout
    done = run("evaluate", str(output / "best.pt"))
    assert done.returncode == 0, done.stderr
    assert "| test |" in done.stdout


def test_train_without_the_test_split_prints_validation_only(synthetic_inter: Path, tmp_path: Path):
    settings = ["epochs=1", "hidden_size=8", "n_heads=2", "MAX_ITEM_LIST_LENGTH=8", "threads=1", "evaluate_test=false"]
    args = [item for setting in settings for item in ("--set", setting)]
    done = run("train", "--model", "sasrec", "--dataset", str(synthetic_inter), "--output", str(tmp_path / "o"), *args)
    assert done.returncode == 0, done.stderr
    assert "| valid (best) |" in done.stdout and "| test |" not in done.stdout
    assert "test: not evaluated" in done.stdout
