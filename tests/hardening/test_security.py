"""A crafted checkpoint never runs code: every load is weights_only, with a positive control."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.hardening.helpers import TINY_TRAIN, assert_clear_error, cli


class Payload:
    """Unpickling this writes a marker file (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def craft(path: Path, marker: Path, how: str) -> Path:
    contents = {"format": "tim4rec-model-1", "payload": Payload(marker)}
    if how == "pickle":
        path.write_bytes(pickle.dumps(contents))
    else:  # a zip written by torch.save, as real checkpoints are
        torch.save(contents, path)
    return path


def runs_code_when_unpickled(path: Path, marker: Path) -> bool:
    """Positive control: loading the same file the unsafe way does write the marker."""
    code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    return marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the crafted file's own protocol
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_evaluate_refuses_a_crafted_model_file(how, tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    path = craft(tmp_path / "best.pt", marker, how)
    assert_clear_error(*cli(capsys, "evaluate", path), "refused to load", "never runs code")
    assert not marker.exists()
    assert runs_code_when_unpickled(path, marker)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the crafted file's own protocol
@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_resume_refuses_a_crafted_checkpoint(how, synthetic_inter: Path, tmp_path: Path, capsys):
    marker = tmp_path / "marker"
    run = tmp_path / "run"
    run.mkdir()
    craft(run / "checkpoint.pt", marker, how)
    code, err = cli(capsys, "train", *TINY_TRAIN, "--dataset", synthetic_inter, "--output", run, "--resume")
    assert_clear_error(code, err, "checkpoint.pt", "refused to load")
    assert not marker.exists()
    assert runs_code_when_unpickled(run / "checkpoint.pt", marker)
