"""docs/serving.md's ONNX section, copied as written, against a small TiM4Rec trained on MovieLens-100K data (only
its paths, ``runs/demo/...``, are replaced): the export command, then the onnxruntime example, whose top 5 must
be what the PyTorch model recommends for the same history."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tim4rec.serving import Recommender

ROOT = Path(__file__).resolve().parents[2]


def onnx_section() -> tuple[str, str]:
    section = (ROOT / "docs" / "serving.md").read_text().split("**Outside PyTorch: ONNX.**", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S)[1], re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_onnx_example_ranks_as_the_model_does(trained, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    command, python = onnx_section()
    model = tmp_path / "runs" / "demo" / "best.pt"
    model.parent.mkdir(parents=True)
    shutil.copy(trained["tim4rec"], model)
    words = shlex.split(command.split("   #")[0])
    assert words[0] == "tim4rec"
    done = subprocess.run([sys.executable, "-m", "tim4rec", *words[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    history = [("50", 881250949), ("181", 881251000)]
    expected = [item.item for item in Recommender.load(model).recommend(history, k=5, exclude_seen=True).items]
    assert done.stdout.strip() == repr(expected)
