"""``tim4rec bench speed``: training-step time, inference time and peak memory against length.

For each model, sequence length and dropout setting, one subprocess builds the model (64-d
defaults, ``max_seq_length`` = the length), random histories of that length (batch 16, 3416 items
by default: ML-1M's count) and measures, after warm-up, the median and spread of

- a training step: ``full_sort_predict`` -> cross-entropy at the read-out position -> backward ->
  Adam step;
- inference: ``full_sort_predict`` under ``torch.no_grad``;
- peak memory above the process's baseline (max RSS on a CPU; ``max_memory_allocated`` on a GPU).

Models run at their configured dropout and with every dropout set to 0 (PyTorch's fused attention
leaves its fast path on a CPU when attention dropout is on). Denormal float32 numbers are flushed
to zero as in training (``--keep-denormals`` measures without). Results go to CSV, markdown and a
log-log PNG, with ratios against SASRec from the same run and the machine's load at start.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tim4rec.bench.common import machine_description, markdown_table, time_call, write_csv
from tim4rec.runtime import runtime_settings

DEFAULT_MODELS = ("sasrec", "tim4rec", "ssd4rec", "mamba4rec")
DEFAULT_LENGTHS = (50, 200, 800, 3200)


def _dropout_free(name: str) -> dict[str, Any]:
    from tim4rec.models import model_defaults

    return {
        key: 0.0
        for key, value in model_defaults(name).items()
        if ("dropout" in key or "drop_out" in key) and isinstance(value, float)
    }


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_point(
    model_name: str, length: int, *, threads: int, flush_denormal: bool = True, **point: Any
) -> dict[str, Any]:
    """One (model, length, dropout) point, in the calling process, under the thread and denormal settings.

    ``point``: batch, items, dropout (bool), device, warmup, repeats, hyperparameters (dict).
    """
    with runtime_settings(threads=threads, flush_denormal=flush_denormal) as runtime:
        row = _measure_point(model_name, length, **point)
    return {**row, "threads": runtime.threads, "flush_denormal": runtime.flush_denormal}


def _measure_point(
    model_name: str,
    length: int,
    *,
    batch: int,
    items: int,
    dropout: bool,
    device: str,
    warmup: int,
    repeats: int,
    hyperparameters: dict[str, Any],
) -> dict[str, Any]:
    from tim4rec.models import create

    torch.manual_seed(0)
    extra = dict(hyperparameters)
    if not dropout:
        extra.update(_dropout_free(model_name))
    lengths = torch.full((batch,), length)
    item_seq = torch.randint(1, items + 1, (batch, length))
    timestamps = 1_000_000_000 + torch.cumsum(torch.randint(0, 100_000, (batch, length)), 1)
    targets = torch.randint(1, items + 1, (batch,))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if device.startswith("cuda") else _max_rss_bytes()
    model = create(model_name, items, length, **extra).to(device)
    item_seq, lengths, timestamps, targets = (t.to(device) for t in (item_seq, lengths, timestamps, targets))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        scores = model.full_sort_predict(item_seq, lengths, timestamps)
        torch.nn.functional.cross_entropy(scores, targets).backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            model.full_sort_predict(item_seq, lengths, timestamps)

    model.train()
    train = time_call(train_step, warmup=warmup, repeats=repeats, device=device)
    model.eval()
    inference = time_call(infer, warmup=warmup, repeats=repeats, device=device)
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else _max_rss_bytes()
    return {
        "model": model_name,
        "length": length,
        "dropout": "on" if dropout else "off",
        "batch": batch,
        "items": items,
        "train_s": train["median"],
        "train_min_s": train["min"],
        "train_max_s": train["max"],
        "infer_s": inference["median"],
        "infer_min_s": inference["min"],
        "infer_max_s": inference["max"],
        "peak_mib": (peak - baseline) / 2**20,
        "repeats": repeats,
        "device": device,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _run_point_subprocess(arguments: dict[str, Any], memory_limit_gib: float | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "tim4rec.bench.speed", "--point", json.dumps(arguments)]
    if memory_limit_gib:
        command += ["--memory-limit-gib", str(memory_limit_gib)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {
            "model": arguments["model_name"],
            "length": arguments["length"],
            "dropout": "on" if arguments["dropout"] else "off",
            "error": tail[:200],
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model, dropout in sorted({(r["model"], r["dropout"]) for r in rows if "train_s" in r}):
        points = sorted(
            (r for r in rows if r["model"] == model and r["dropout"] == dropout and "train_s" in r),
            key=lambda r: r["length"],
        )
        style = "-" if dropout == "off" else "--"
        label = f"{model} (dropout {dropout})"
        time_axis.plot([p["length"] for p in points], [p["train_s"] for p in points], style, marker="o", label=label)
        memory_axis.plot(
            [p["length"] for p in points], [max(p["peak_mib"], 1e-3) for p in points], style, marker="o", label=label
        )
    for axis, title, unit in (
        (time_axis, "training step", "seconds"),
        (memory_axis, "peak memory above baseline", "MiB"),
    ):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3, which="both")
    time_axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(
    models: list[str],
    lengths: list[int],
    *,
    batch: int,
    items: int,
    dropouts: list[bool],
    device: str,
    threads: int,
    warmup: int,
    repeats: int,
    output: Path,
    memory_limit_gib: float | None,
    hyperparameters: dict[str, dict[str, Any]],
    flush_denormal: bool = True,
) -> str:
    machine = machine_description(threads, device)
    rows = []
    for model in models:
        for dropout in dropouts:
            for length in lengths:
                arguments = {
                    "model_name": model,
                    "length": length,
                    "batch": batch,
                    "items": items,
                    "dropout": dropout,
                    "device": device,
                    "threads": threads,
                    "warmup": warmup,
                    "repeats": repeats,
                    "hyperparameters": hyperparameters.get(model, {}),
                    "flush_denormal": flush_denormal,
                }
                row = _run_point_subprocess(arguments, memory_limit_gib)
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    reference = {(r["length"], r["dropout"]): r for r in rows if r["model"] == "sasrec" and "train_s" in r}
    for row in rows:
        base = reference.get((row["length"], row["dropout"]))
        if base and "train_s" in row:
            row["train_vs_sasrec"] = row["train_s"] / base["train_s"]
            row["infer_vs_sasrec"] = row["infer_s"] / base["infer_s"]
            row["memory_vs_sasrec"] = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else None
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / "speed.csv")
    plot(rows, output / "speed.png")
    columns = [
        ("model", "model"),
        ("dropout", "dropout"),
        ("length", "L"),
        ("train_s", "train step s"),
        ("train_min_s", "min"),
        ("train_max_s", "max"),
        ("train_vs_sasrec", "x SASRec"),
        ("infer_s", "inference s"),
        ("infer_vs_sasrec", "x SASRec"),
        ("peak_mib", "peak MiB"),
        ("memory_vs_sasrec", "x SASRec"),
        ("error", "error"),
    ]
    text = (
        f"# Speed and memory (batch {batch}, {items} items, {device}, {threads} thread(s), "
        f"denormals {'flushed to zero' if flush_denormal else 'kept'})\n\n"
        f"Machine: {json.dumps(machine)}\n\n" + markdown_table(rows, columns)
    )
    (output / "speed.md").write_text(text)
    (output / "machine.json").write_text(json.dumps(machine, indent=2))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tim4rec bench speed")
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--memory-limit-gib", type=float, default=None)
    arguments = parser.parse_args(argv)
    if arguments.memory_limit_gib:
        limit = int(arguments.memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    print(json.dumps(measure_point(**json.loads(arguments.point))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
