"""``tim4rec bench serve`` at tiny sizes (the README's command, smoke form)."""

import csv
import re
import subprocess
import sys
from pathlib import Path

how_aot = r"(compiled by AOTInductor|loaded from the cache of AOTInductor libraries)"


def test_bench_serve_command(trained, tmp_path: Path, step_cache_environment):
    done = subprocess.run(
        [sys.executable, "-m", "tim4rec", "bench", "serve", str(trained["tim4rec"]), "--history", "5",
         "--concurrency", "1", "4", "--requests", "12", "--warmup", "2", "--lengths", "5", "--repeats", "2",
         "--users", "5", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=step_cache_environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "serve.md").read_text()
    assert "| on | 4 |" in text and "| off | 1 |" in text and "after 5 new users" in text
    assert "| step ms | read-out + ranking ms | step + ranking ms | p90 ms | store write ms |" in text
    assert re.search(rf"the model's step {how_aot} in ", text)
    assert (tmp_path / "serve.png").stat().st_size > 0


def test_bench_serve_streaming_only(trained, tmp_path: Path, step_cache_environment):
    """One process, no server: the streaming table alone, its columns separate, a row per length."""
    done = subprocess.run(
        [sys.executable, "-m", "tim4rec", "bench", "serve", str(trained["tim4rec"]), "--streaming-only",
         "--lengths", "5", "30", "--repeats", "25", "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=step_cache_environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "serve.md").read_text()
    assert "POST /recommend" not in text and "Resident memory" not in text and not (tmp_path / "serve.csv").exists()
    assert "| step ms | read-out + ranking ms | step + ranking ms | p90 ms | store write ms |" in text
    assert "Over 25 consecutive events of one user" in text and "median over 20 of those histories" in text
    rows = (tmp_path / "serve_updates.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 3 and [row.split(",")[header.index("length")] for row in rows[1:]] == ["5", "30"]
    for row in rows[1:]:
        values = dict(zip(header, row.split(",")))
        assert 0 < float(values["step_rank_ms"]) <= float(values["step_rank_p90_ms"])
    # the step by each compiler, side by side, each as it really ran
    assert "## The step alone, by each compiler" in text and "25 events in turns" in text
    with open(tmp_path / "serve_steps.csv") as handle:
        steps = {row["compiler"]: row for row in csv.DictReader(handle)}
    assert list(steps) == ["eager", "torch.compile", "AOTInductor"]
    assert steps["eager"]["how"] == "run eagerly" and float(steps["eager"]["speedup"]) == 1.0
    assert steps["torch.compile"]["how"].startswith("compiled by torch.compile in ")
    assert re.match(how_aot, steps["AOTInductor"]["how"])
    for row in steps.values():  # each compiled step ran compiled throughout and stayed with the eager one
        assert 0 < float(row["step_us"]) <= float(row["step_p90_us"])
        assert int(row["eager_calls"]) == 0 and float(row["state_difference"]) < 1e-3


def test_bench_serve_with_replicas_on_postgresql(trained, postgres, tmp_path: Path, step_cache_environment):
    url = postgres.fresh_database("bench")
    done = subprocess.run(
        [sys.executable, "-m", "tim4rec", "bench", "serve", str(trained["tim4rec"]), "--history", "5",
         "--concurrency", "4", "--requests", "20", "--warmup", "2", "--lengths", "5", "--repeats", "2",
         "--users", "5", "--output", str(tmp_path), "--store", url, "--replicas", "2"],
        capture_output=True, text=True, timeout=600, env=step_cache_environment,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "serve.md").read_text()
    assert "| 1 replica, SQLite | 4 |" in text and "| 2 replicas, PostgreSQL | 4 |" in text
    rows = (tmp_path / "serve_stores.csv").read_text().splitlines()
    assert len(rows) == 3 and all(row.split(",")[-1] != "" for row in rows)
