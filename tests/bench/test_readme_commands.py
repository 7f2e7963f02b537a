"""Every benchmark command the README shows still runs, here at tiny sizes; the committed tables
regenerate from their results.json files, and the README holds exactly those tables."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tim4rec.bench import quality_plan, quality_report
from tim4rec.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PLANS = sorted((ROOT / "docs" / "benchmarks").glob("*.yaml"))


def tim4rec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tim4rec", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("plan", PLANS, ids=[p.stem for p in PLANS])
def test_committed_plans_parse_and_their_tables_regenerate(plan: Path, tmp_path: Path):
    parsed = quality_plan.read_plan(plan)
    for name in parsed["runs"]:
        for seed in quality_plan.run_seeds(parsed, name):
            load_config(overrides=quality_plan.run_config(parsed, name, seed))  # every run's config is valid
    committed = plan.with_suffix("")
    if not (committed / "runs").exists():
        pytest.skip("no committed runs for this plan")
    shutil.copytree(committed / "runs", tmp_path / "runs", ignore=shutil.ignore_patterns("*.pt", ".lock"))
    assert quality_report.report(plan, tmp_path) == (committed / "quality.md").read_text()


def test_bench_speed_command(tmp_path: Path):
    done = tim4rec(
        "bench", "speed", "--models", "sasrec", "tim4rec", "--lengths", "8", "--batch", "2", "--items", "20",
        "--dropout", "off", "--repeats", "1", "--warmup", "0", "--threads", "1", "--output", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| tim4rec | float32 | off | eager | 8 |" in (tmp_path / "speed.md").read_text()


def test_bench_kernel_command(tmp_path: Path):
    done = tim4rec(
        "bench", "kernel", "--lengths", "16", "32", "--batch", "1", "--heads", "2", "--head-dim", "2", "--state", "2",
        "--chunk", "8", "--threads", "1", "--warmup", "0", "--repeats", "1", "--output", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ssd_chunked" in (tmp_path / "kernel.md").read_text() and (tmp_path / "kernel.png").exists()


def test_readme_holds_the_generated_tables():
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs/benchmarks/sync_readme.py"), "--check"], capture_output=True
    )
    assert done.returncode == 0, done.stdout


def test_bench_threads_command(synthetic_inter: Path, tmp_path: Path):
    done = tim4rec("bench", "threads", "--dataset", str(synthetic_inter), "--steps", "2", "--states", "idle",
                   "--output", str(tmp_path))  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "threads.md").read_text()
    assert "| idle | threads=1 | 1 |" in text and "default (threads unset)" in text


def test_bench_catalogue_and_data_commands(tmp_path: Path):
    done = tim4rec(
        "bench", "catalogue", "--sizes", "500", "--windows", "2", "--length", "10", "--users", "4", "--repeats", "1",
        "--negatives", "16", "--output", str(tmp_path / "catalogue"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "catalogue" / "catalogue.md").read_text()
    assert "| 500 | full |" in table and "| 500 | sampled | 16 |" in table
    from tests.conftest import synthetic_rows, write_inter

    data = write_inter(tmp_path / "log.inter", synthetic_rows())
    done = tim4rec("bench", "data", str(data), "--output", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "data" / "data.md").read_text()
    assert "| prefix | 352 | 262 | 262 |" in table and "| causal | 352 | 30 | 262 |" in table  # 5-core filtered
