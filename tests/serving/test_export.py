"""``tim4rec export``: the ONNX graph of a saved model scores as the eager model does (onnxruntime, 1e-4), for any
batch size and any history length (longer than L: its last L events); models it cannot export are refused with a
clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tim4rec
from tim4rec.errors import Tim4RecError
from tim4rec.serving.export import export_onnx, random_histories
from tim4rec.serving.recommender import Recommender


@pytest.fixture(scope="module")
def gru4rec(slice_with_titles: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gru4rec")
    tim4rec.train(model="gru4rec", dataset=slice_with_titles, output_dir=root, epochs=1, threads=1,
                  show_progress=False, MAX_ITEM_LIST_LENGTH=20, hidden_size=16)  # fmt: skip
    return root / "best.pt"


@pytest.mark.parametrize("name", ["tim4rec", "sasrec", "gru4rec"])
def test_onnx_scores_equal_the_eager_model(name: str, trained, gru4rec: Path, tmp_path: Path):
    import onnxruntime

    checkpoint = gru4rec if name == "gru4rec" else trained[name]
    done = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert done["max_abs_difference"] <= 1e-4
    recommender = Recommender.load(checkpoint)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    model = recommender.model.float().eval()
    length = model.max_seq_length
    for size, events in ((1, 1), (5, length), (33, 3 * length + 1), (4, 7)):  # any batch size, any history length
        inputs = random_histories(recommender.n_items, size, events, seed=size + 10)
        names = ("item_seq", "item_seq_len", "timestamps")
        exported = session.run(None, {key: tensor.numpy() for key, tensor in zip(names, inputs)})[0]
        assert exported.shape == (size, recommender.n_items + 1)
        for row in range(size):  # each history alone: its last L events, as the serving window keeps them
            n = int(inputs[1][row])
            kept = slice(max(n - length, 0), n)
            one = (inputs[0][row, kept][None], torch.tensor([min(n, length)]), inputs[2][row, kept][None])
            with torch.no_grad():
                eager = model.item_scores(model.readout(*one)).numpy()
            assert abs(exported[row] - eager[0]).max() <= 1e-4, (size, events, row)
    ids = json.loads((tmp_path / "model.items.json").read_text())
    assert ids["item_tokens"] == recommender.item_tokens and ids["model"] == name


def test_models_it_cannot_export_are_refused(trained, tmp_path: Path):
    with pytest.raises(Tim4RecError, match="bert4rec cannot be exported to ONNX here; exported: tim4rec, sasrec"):
        export_onnx(trained["bert4rec"], tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_the_export_command(trained, tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "tim4rec", "export", str(trained["sasrec"]), "--format", "onnx",
         "--output", str(tmp_path / "s.onnx"), "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "scores equal the model's to" in done.stdout and (tmp_path / "s.onnx").stat().st_size > 0
