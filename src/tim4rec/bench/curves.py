"""``tim4rec bench curves``: two or more runs' validation curves side by side, at chosen epochs.

For a change that should not move the results (a precision, a faster kernel): each run's
validation NDCG@10 at the given epochs, its difference from the first run, and the mean seconds
of training and validation per full epoch; written to ``curves.md`` beside the command that made it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from tim4rec.bench.common import markdown_table
from tim4rec.errors import Tim4RecError


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
        return {"path": path, "epochs": {e["epoch"]: e for e in results["epochs"]}, "config": results["config"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Tim4RecError(f"{path}: not a run's results.json ({error})") from None


def _label(run: dict[str, Any]) -> str:
    """The run's model, precision and kernels, and its mean seconds of training and validation per full epoch."""
    config = run["config"]
    model = config["model"] + (f" ({config['time_mode']})" if config.get("time_mode") else "")
    precision = {"off": "float32"}.get(config.get("mixed_precision", "off"), config.get("mixed_precision"))
    full = [e for e in run["epochs"].values() if not e.get("partial")] or list(run["epochs"].values())
    train = statistics.mean(e["train_seconds"] for e in full)
    valid = statistics.mean(e["valid_seconds"] for e in full)
    compiled = "compiled" if config.get("compile") else "eager"
    return f"{model}, {precision}, {compiled}: {train:.1f} s of training + {valid:.1f} s of validation per epoch"


def run(paths: list[str], epochs: list[int], output: Path, metric: str = "ndcg@10") -> str:
    runs = [_read(p) for p in paths]
    reference = runs[0]
    rows = []
    for epoch in epochs:
        row: dict[str, Any] = {"epoch": epoch}
        for index, current in enumerate(runs):
            entry = current["epochs"].get(epoch)
            row[f"run{index}"] = entry["valid"][metric] if entry else None
            base = reference["epochs"].get(epoch)
            if index and entry and base:
                row[f"delta{index}"] = entry["valid"][metric] - base["valid"][metric]
        rows.append(row)
    columns = [("epoch", "epoch")]
    for index, _ in enumerate(runs):
        columns.append((f"run{index}", f"run {index + 1}"))
        if index:
            columns.append((f"delta{index}", f"run {index + 1} - run 1"))
    listing = "\n".join(f"{index + 1}. `{current['path']}`: {_label(current)}" for index, current in enumerate(runs))
    command = "tim4rec bench curves " + " ".join(shlex.quote(str(p)) for p in paths)
    command += " --epochs " + " ".join(map(str, epochs)) + f" --output {shlex.quote(str(output))}"
    text = (
        f"# Validation {metric.upper()} by epoch\n\n{listing}\n\n" + markdown_table(rows, columns) + f"\n`{command}`\n"
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "curves.md").write_text(text)
    return text


HELP = "runs' validation curves side by side at chosen epochs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench curves``."""
    parser.add_argument("results", nargs="+", help="results.json of each run (the first is the reference)")
    parser.add_argument("--epochs", nargs="+", type=int, default=[5, 10, 20, 40])
    parser.add_argument("--output", required=True, help="folder for curves.md")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench curves``: write curves.md and print it."""
    print(run(args.results, args.epochs, Path(args.output)))
    return 0
