"""Running the command line in this process and checking that a failure is one clear line."""

from __future__ import annotations

import pytest

from tim4rec.cli import main


def cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """Run ``tim4rec ARGS`` here; returns (exit status, stderr). An escaping exception fails the test."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_clear_error(code: int, stderr: str, *fragments: str) -> str:
    """Exit status 2, exactly one ``tim4rec: error:`` line holding every fragment, no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("tim4rec: error:")]
    assert code == 2, stderr
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


TINY_TRAIN = [
    "--model", "sasrec", "--set", "hidden_size=8", "--set", "n_heads=2", "--set", "inner_size=16",
    "--set", "n_layers=1", "--set", "MAX_ITEM_LIST_LENGTH=8", "--set", "threads=1", "--set", "show_progress=false",
]  # fmt: skip
