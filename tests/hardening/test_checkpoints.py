"""Damaged, foreign or mismatched files on `evaluate` and `--resume`, and output folders that cannot
be written: one clear line each, and nothing already written is lost."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import synthetic_rows, write_inter
from tests.hardening.helpers import TINY_TRAIN, assert_clear_error, cli
from tim4rec.errors import Tim4RecError
from tim4rec.evaluation import evaluate_saved_model
from tim4rec.serving.recommender import Recommender


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch run; its dataset file is data.inter beside the run folder."""
    root = tmp_path_factory.mktemp("finished")
    data = write_inter(root / "data.inter", synthetic_rows())
    code = subprocess.run(
        [sys.executable, "-m", "tim4rec", "train", *TINY_TRAIN, "--dataset", str(data), "--output", str(root / "run"),
         "--set", "epochs=1"],
        capture_output=True, text=True, timeout=300,
    ).returncode  # fmt: skip
    assert code == 0
    return root


def copy_run(finished_run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the run and its dataset: (run folder, data file)."""
    shutil.copy(finished_run / "data.inter", tmp_path / "data.inter")
    shutil.copytree(finished_run / "run", tmp_path / "run")
    for name in ("best.pt", "checkpoint.pt"):  # point the saved configs at the copied data
        saved = torch.load(tmp_path / "run" / name, weights_only=True)
        saved["config"]["dataset"] = str(tmp_path / "data.inter")
        torch.save(saved, tmp_path / "run" / name)
    return tmp_path / "run", tmp_path / "data.inter"


def renumber_items(data: Path) -> None:
    """Rewrite the dataset with the same interactions in another file order (so other item ids)."""
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")


def edit(path: Path, change) -> None:
    saved = torch.load(path, weights_only=True)
    change(saved)
    torch.save(saved, path)


def grow_item_table(saved: dict) -> None:
    state = saved["model_state"]
    state["item_embedding.weight"] = torch.cat([state["item_embedding.weight"], state["item_embedding.weight"][:1]])


def truncate(name: str, keep: int):
    return lambda run, data: (run / name).write_bytes((run / name).read_bytes()[:keep])


def random_bytes(name: str):
    return lambda run, data: (run / name).write_bytes(os.urandom(4096))


def change_config(name: str, **changes):
    return lambda run, data: edit(run / name, lambda saved: saved["config"].update(changes))


def replace_field(key: str, value):
    """Damage best.pt by replacing its field ``key`` with ``value(saved)``."""
    return lambda run, data: edit(run / "best.pt", lambda saved: saved.__setitem__(key, value(saved)))


def fill_weights(value: float, name: str | None = None):
    """Damage best.pt by setting every weight (or the tensor ``name``) to ``value``."""

    def fill(saved: dict) -> None:
        for key, tensor in saved["model_state"].items():
            if name in (None, key):
                tensor.fill_(value)

    return lambda run, data: edit(run / "best.pt", fill)


EVALUATE_CASES = {
    "truncated": (truncate("best.pt", 500), "not a readable saved model"),
    "random bytes": (random_bytes("best.pt"), "not a readable saved model"),
    "a checkpoint.pt": (
        lambda run, data: shutil.copy(run / "checkpoint.pt", run / "best.pt"),
        "not a tim4rec model file",
    ),
    "weights of another item count": (lambda run, data: edit(run / "best.pt", grow_item_table), "do not fit the model"),
    "dataset renumbered": (lambda run, data: renumber_items(data), "item ids differ"),
    # each field of the wrong type: the file and the field named
    "config a string": (replace_field("config", lambda s: "sasrec"), "(config: expected a dict of settings, got str)"),
    "config a list": (
        replace_field("config", lambda s: [s["config"]]),
        "(config: expected a dict of settings, got list)",
    ),
    "item_tokens None": (replace_field("item_tokens", lambda s: None), "item_tokens: expected a list of item ids"),
    "item_tokens a string": (replace_field("item_tokens", lambda s: "i1 i2"), "item_tokens: expected a list of item"),
    "item_tokens truncated": (
        replace_field("item_tokens", lambda s: s["item_tokens"][:5]),
        "item_tokens: expected n_items + 1 = 39 item ids, got 5",
    ),
    "item_tokens of floats": (
        replace_field("item_tokens", lambda s: [0.5] * len(s["item_tokens"])),
        "item_tokens: expected item ids (strings), got float at index 0",
    ),
    "n_items a string": (replace_field("n_items", lambda s: str(s["n_items"])), "n_items: expected a positive integer"),
    "max_seq_length 0": (replace_field("max_seq_length", lambda s: 0), "max_seq_length: expected a positive integer"),
    "hyperparameters a list": (replace_field("hyperparameters", lambda s: []), "hyperparameters: expected a dict"),
    "model_state a list": (
        replace_field("model_state", lambda s: list(s["model_state"].values())),
        "model_state: expected a dict of tensors, got list",
    ),
    "model_state holding a number": (
        replace_field("model_state", lambda s: {**s["model_state"], "item_embedding.weight": 0.0}),
        "model_state: expected a dict of tensors, got float at 'item_embedding.weight'",
    ),
    "model a number": (replace_field("model", lambda s: 1), "model: expected a non-empty string"),
    # weights with which every score is NaN: refused, not ranked
    "all weights NaN": (fill_weights(float("nan")), "non-finite values (NaN or infinity), first in 'item_embedding"),
    "one tensor infinite": (
        fill_weights(float("inf"), "layer_norm.bias"),
        "non-finite values (NaN or infinity), first in 'layer_norm.bias'",
    ),
}


@pytest.mark.parametrize("case", EVALUATE_CASES, ids=list(EVALUATE_CASES))
def test_evaluate_a_bad_saved_model(case, finished_run: Path, tmp_path: Path, capsys):
    damage, fragment = EVALUATE_CASES[case]
    run, data = copy_run(finished_run, tmp_path)
    damage(run, data)
    assert_clear_error(*cli(capsys, "evaluate", run / "best.pt"), str(run / "best.pt"), fragment)


def test_non_finite_weights_are_refused_when_recommending(finished_run: Path, tmp_path: Path, capsys):
    """``recommend`` (and the Python API under it) refuses NaN weights, and writes no answer."""
    run, data = copy_run(finished_run, tmp_path)
    fill_weights(float("nan"))(run, data)
    output = tmp_path / "recommendations.csv"
    code, err = cli(capsys, "recommend", run / "best.pt", "--output", output, "--threads", "1")
    assert_clear_error(code, err, str(run / "best.pt"), "non-finite values")
    assert not output.exists()
    with pytest.raises(Tim4RecError, match="non-finite values"):
        Recommender.load(run / "best.pt")


def test_streaming_evaluation_of_a_fixed_length_model(finished_run: Path):
    """SASRec (max_seq_length 8) on histories of 12 events, streamed: it sees the most recent 8 events,
    as in the windowed evaluation and in serving, so the metrics are the same."""
    best = finished_run / "run" / "best.pt"
    streamed = evaluate_saved_model(best, streaming=True)["metrics"]
    assert streamed == pytest.approx(evaluate_saved_model(best)["metrics"])


def test_evaluate_a_folder(finished_run: Path, capsys):
    assert_clear_error(*cli(capsys, "evaluate", finished_run / "run"), "a folder, not a saved model")


RESUME_CASES = {
    "truncated": (truncate("checkpoint.pt", 700), "not a readable checkpoint"),
    "random bytes": (random_bytes("checkpoint.pt"), "not a readable checkpoint"),
    "another model's": (change_config("checkpoint.pt", model="gru4rec"), "holds a 'gru4rec' run, not 'sasrec'"),
    "other hyper-parameters": (change_config("checkpoint.pt", hidden_size=16), "hidden_size: 16 -> 8"),
    "weights of another item count": (lambda run, data: edit(run / "checkpoint.pt", grow_item_table), "do not fit"),
    "dataset renumbered": (lambda run, data: renumber_items(data), "item ids differ"),
    "no checkpoint": (lambda run, data: (run / "checkpoint.pt").unlink(), "no such checkpoint"),
    "weights NaN": (
        lambda run, data: edit(run / "checkpoint.pt", lambda c: c["model_state"]["layer_norm.bias"].fill_(math.nan)),
        "non-finite values (NaN or infinity), first in 'layer_norm.bias'",
    ),
}


@pytest.mark.parametrize("case", RESUME_CASES, ids=list(RESUME_CASES))
def test_resume_from_a_bad_checkpoint(case, finished_run: Path, tmp_path: Path, capsys):
    damage, fragment = RESUME_CASES[case]
    run, data = copy_run(finished_run, tmp_path)
    damage(run, data)
    before = (run / "results.json").read_bytes()
    code, err = cli(capsys, "train", *TINY_TRAIN, "--dataset", data, "--output", run, "--set", "epochs=2", "--resume")
    assert_clear_error(code, err, fragment)
    assert (run / "results.json").read_bytes() == before


def test_a_folder_with_only_another_runs_best_pt_is_a_run(finished_run: Path, tmp_path: Path, capsys):
    run, data = copy_run(finished_run, tmp_path)
    for name in ("checkpoint.pt", "results.json"):
        (run / name).unlink()
    best = (run / "best.pt").read_bytes()
    code, err = cli(capsys, "train", *TINY_TRAIN, "--dataset", data, "--output", run, "--set", "epochs=1")
    assert_clear_error(code, err, "already holds a run")
    assert (run / "best.pt").read_bytes() == best


@pytest.mark.parametrize(
    "where, fragment",
    [
        ("file", "is a file, not a folder"),
        ("under a file", "a part of the path is a file"),
        ("/proc/tim4rec-test/run", "cannot create the output folder"),  # /proc refuses new folders, even to root
    ],
)
def test_output_folder_that_cannot_be_used(where, fragment, tmp_path: Path, capsys):
    (tmp_path / "file").write_text("not a folder")
    output = {"file": tmp_path / "file", "under a file": tmp_path / "file" / "run"}.get(where, Path(where))
    data = write_inter(tmp_path / "data.inter", synthetic_rows())
    assert_clear_error(*cli(capsys, "train", *TINY_TRAIN, "--dataset", data, "--output", output), fragment)


def test_a_run_that_fails_leaves_no_folder(tmp_path: Path, monkeypatch, capsys):
    """The default output folder (and runs/ above it) is removed again when the run fails before writing there."""
    monkeypatch.chdir(tmp_path)
    code, err = cli(capsys, "train", "--model", "sasrec", "--dataset", "no-such-data")
    assert_clear_error(code, err, "neither a named dataset")
    assert not any(tmp_path.iterdir())


def test_an_interrupted_run_removes_only_the_folders_it_created(tmp_path: Path, monkeypatch, capsys):
    """Ctrl-C while the data loads: a new output folder goes, an existing (empty) one stays."""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tim4rec.training.api.build_experiment", interrupt)
    (tmp_path / "existing").mkdir()
    for output in (tmp_path / "existing", tmp_path / "new" / "run"):
        code, err = cli(capsys, "train", *TINY_TRAIN, "--dataset", "no-such-data", "--output", output)
        assert code == 130 and "tim4rec: interrupted" in err, err
    assert [path.name for path in tmp_path.iterdir()] == ["existing"]


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of dying, as a full disk (ENOSPC) would
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
from tim4rec.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_while_saving(finished_run: Path, tmp_path: Path):
    """Resuming under a file-size limit smaller than the model file: the save fails with one line
    and every file of the run keeps its previous content."""
    run, data = copy_run(finished_run, tmp_path)
    before = {name: (run / name).read_bytes() for name in ("best.pt", "checkpoint.pt", "results.json")}
    limit = min(len(before["best.pt"]), len(before["checkpoint.pt"])) // 2
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(limit), "train", *TINY_TRAIN, "--dataset", str(data), "--output",
         str(run), "--set", "epochs=2", "--resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert_clear_error(done.returncode, done.stderr, "cannot write", "File too large", "the previous file is kept")
    assert {name: (run / name).read_bytes() for name in before} == before
    assert json.loads(before["results.json"])["status"] == "finished"
