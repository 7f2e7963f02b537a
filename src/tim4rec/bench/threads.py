"""``tim4rec bench threads``: training speed by thread setting, on an idle machine and with one core busy.

Each measurement is ``tim4rec train`` (TiM4Rec on the given dataset, ``max_steps`` steps) in a
subprocess; the seconds are the training seconds of those steps from its ``results.json``.
Settings: every thread count from 1 to the usable cores, the same with OpenMP's passive wait
policy (``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning), and the default
(``threads`` unset: the cores idle at start, :func:`tim4rec.runtime.default_threads`). "busy"
runs them while another ``tim4rec train --set threads=1`` (SASRec on ml-100k) keeps one core
busy. Each setting's time is also given as a multiple of the best setting of the same state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tim4rec.bench.common import machine_description
from tim4rec.io.tables import markdown_table, write_csv


def _tim4rec(*args: str, env: dict[str, str] | None = None, **options: Any):
    command = [sys.executable, "-m", "tim4rec", *args]
    return subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, **options)


def _train_seconds(dataset: str, steps: int, threads: int | None, env: dict[str, str] | None) -> tuple[int, float]:
    with tempfile.TemporaryDirectory(prefix="tim4rec-threads-") as folder:
        args = ["train", "--model", "tim4rec", "--dataset", dataset, "--output", f"{folder}/run",
                "--set", f"max_steps={steps}", "--set", "show_progress=false"]  # fmt: skip
        if threads is not None:
            args += ["--set", f"threads={threads}"]
        done = _tim4rec(*args, env=env)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "training failed")
        results = json.loads(Path(f"{folder}/run/results.json").read_text())
        return results["threads"], results["epochs"][0]["train_seconds"]


def _busy_process() -> subprocess.Popen:
    """Another single-thread training that keeps one core busy until killed."""
    folder = tempfile.mkdtemp(prefix="tim4rec-busy-")
    args = [sys.executable, "-m", "tim4rec", "train", "--model", "sasrec", "--dataset", "ml-100k", "--output",
            f"{folder}/run", "--set", "threads=1", "--set", "show_progress=false", "--set", "epochs=100000",
            "--set", "stopping_step=100000"]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(dataset: str, steps: int, states: list[str], output: Path, settle_seconds: float = 10.0) -> str:
    from tim4rec.runtime import usable_cores

    machine = machine_description(usable_cores())
    settings: list[tuple[str, int | None, dict[str, str] | None]] = []
    for count in range(1, usable_cores() + 1):
        settings.append((f"threads={count}", count, None))
    settings += [(f"threads={usable_cores()}, OMP_WAIT_POLICY=PASSIVE", usable_cores(), {"OMP_WAIT_POLICY": "PASSIVE"})]
    settings += [("default (threads unset)", None, None)]
    rows = []
    for state in states:
        other = _busy_process() if state == "busy" else None
        try:
            if other is not None:
                time.sleep(settle_seconds)  # let it load its data and start training
            for name, threads, env in settings:
                used, seconds = _train_seconds(dataset, steps, threads, env)
                row = {"state": state, "setting": name, "threads": used, "seconds": seconds}
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
        finally:
            if other is not None:
                other.kill()
                other.wait()
    for state in states:
        best = min(r["seconds"] for r in rows if r["state"] == state)
        for row in rows:
            if row["state"] == state:
                row["x_best"] = row["seconds"] / best
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / "threads.csv")
    columns = [("state", "machine"), ("setting", "setting"), ("threads", "threads used"),
               ("seconds", f"seconds for {steps} steps"), ("x_best", "x best")]  # fmt: skip
    text = (
        f"# Training speed by thread setting ({dataset}, TiM4Rec, {steps} steps; busy = another "
        "`tim4rec train --set threads=1` on the machine)\n\n"
        f"Machine: {json.dumps(machine)}\n\n" + markdown_table(rows, columns)
    )
    (output / "threads.md").write_text(text)
    return text


HELP = "training speed by thread setting, idle and with one core busy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench threads``."""
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--states", nargs="+", choices=["idle", "busy"], default=["idle", "busy"])
    parser.add_argument("--output", default="docs/benchmarks/threads")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench threads``: measure, write the report, print its table."""
    print(run(args.dataset, args.steps, args.states, Path(args.output)))
    return 0
