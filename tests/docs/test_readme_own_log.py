"""The README's "train on your own log, watch it, tune it" commands, parsed and run at a tiny size: the train
command on a CSV log with a ``uid`` column (its TensorBoard event files read back), ``tensorboard`` installed,
and the tune command with the committed example space for two short trials."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import synthetic_rows

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "hidden_size=16", "--set", "head_dim=8", "--set", "chunk_size=4", "--set", "MAX_ITEM_LIST_LENGTH=10",
        "--set", "epochs=2", "--set", "threads=1"]  # fmt: skip


def own_log_commands() -> list[list[str]]:
    section = (ROOT / "README.md").read_text().split("Train on your own log", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_the_own_log_commands_run_at_a_tiny_size(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, board, tune = own_log_commands()
    assert train[0] == tune[0] == ".venv/bin/tim4rec" and board[0] == ".venv/bin/tensorboard"
    assert Path(sys.executable).with_name("tensorboard").exists()
    rows = synthetic_rows(n_users=40, per_user=10)
    lines = ["uid,item_id,timestamp"] + [f"{user},{item},{time}" for user, item, _, time in rows]
    (tmp_path / "my_log.csv").write_text("\n".join(lines) + "\n")
    done = subprocess.run([sys.executable, "-m", "tim4rec", *train[1:], *TINY], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    events = EventAccumulator(str(tmp_path / "runs" / "mine" / "tensorboard"))
    events.Reload()
    assert any("ndcg@10" in tag for tag in events.Tags()["scalars"])
    space = tune[tune.index("--space") + 1]
    tune[tune.index("--space") + 1] = str(ROOT / space)
    tune[tune.index("--dataset") + 1] = "my_log.csv"
    tune[tune.index("--trials") + 1] = "2"
    done = subprocess.run([sys.executable, "-m", "tim4rec", *tune[1:], *TINY, "--set", "USER_ID_FIELD=uid"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "tune" / "best.json").exists() and (tmp_path / "runs" / "tune" / "trials.md").exists()
