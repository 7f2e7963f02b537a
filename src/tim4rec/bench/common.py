"""Helpers shared by the benchmarks: timing, machine description, tables."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tim4rec.io.tables import markdown_table, write_csv


def machine_description(threads: int, device: str = "cpu") -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "device": device,
        "load_average_at_start": [round(x, 2) for x in load],
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(function: Callable[[], Any], *, warmup: int, repeats: int, device: str = "cpu") -> dict[str, float]:
    """Median and spread (min, max) of the wall time of ``function`` in seconds."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "repeats": repeats}


def write_report(
    output: Path, name: str, title: str, notes: str, machine: dict[str, Any], rows: list[dict[str, Any]],
    columns: list[tuple[str, str]],
) -> str:  # fmt: skip
    """Write ``name.csv`` (every key), ``name.md`` (title, notes, machine, the table of ``columns``) and
    ``machine.json`` into ``output``; returns the markdown."""
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / f"{name}.csv")
    text = f"# {title}\n\n{notes}\n\nMachine: {json.dumps(machine)}\n\n" + markdown_table(rows, columns)
    (output / f"{name}.md").write_text(text)
    (output / "machine.json").write_text(json.dumps(machine, indent=2))
    return text


def max_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_point(module: str, arguments: dict[str, Any], memory_limit_gib: float | None) -> dict[str, Any]:
    """``python -m module --point JSON`` in a fresh process (its own peak memory), its last stdout line as
    a dict; ``{"error": ...}`` (the last stderr line) when it fails or runs out of the memory limit."""
    command = [sys.executable, "-m", module, "--point", json.dumps(arguments)]
    if memory_limit_gib:
        command += ["--memory-limit-gib", str(memory_limit_gib)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": ((done.stderr.strip().splitlines() or ["killed"])[-1])[:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def point_main(prog: str, measure: Callable[..., dict[str, Any]], argv: list[str] | None = None) -> int:
    """The entry of a point subprocess: ``--point JSON`` (``measure``'s keyword arguments), ``--memory-limit-gib``."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--point", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit-gib", type=float, default=None)
    arguments = parser.parse_args(argv)
    if arguments.memory_limit_gib:
        limit = int(arguments.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps(measure(**json.loads(arguments.point))))
    return 0
