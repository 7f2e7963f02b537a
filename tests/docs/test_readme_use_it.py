"""The README's "Use it" commands, copied as written, against a small TiM4Rec trained on MovieLens-100K data
the way ``make demo`` trains (only its path, ``runs/demo/best.pt``, is replaced)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serving.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def use_it_blocks() -> tuple[list[str], str]:
    """The first bash block's command lines and the Python block of the README's "Use it" section."""
    section = (ROOT / "README.md").read_text().split("## Use it", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    python = re.search(r"```python\n(.*?)```", section, re.S)[1]
    return [line for line in bash.splitlines() if line.strip()], python


def test_the_use_it_commands_work_on_the_demo_model(trained, tmp_path: Path):
    commands, python = use_it_blocks()
    assert commands and all(line.startswith(".venv/bin/tim4rec ") for line in commands)
    model = str(trained["tim4rec"])
    for line in commands:
        words = shlex.split(line.split("   #")[0])
        words = [sys.executable, "-m", "tim4rec", *[model if w == "runs/demo/best.pt" else w for w in words[1:]]]
        if words[3] == "serve":
            port = free_port()
            words[words.index("--port") + 1] = str(port)
            server = subprocess.Popen([*words, "--store", str(tmp_path / "u.sqlite"), "--eager-step"], cwd=tmp_path)
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.3)
                assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=10).status_code == 200
            finally:
                server.terminate()
                server.wait(timeout=60)
            continue
        done = subprocess.run(words, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (line, done.stderr[-2000:])
    assert (tmp_path / "recommendations.csv").stat().st_size > 0
    script = python.replace("runs/demo/best.pt", model)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5, done.stderr[-2000:]
