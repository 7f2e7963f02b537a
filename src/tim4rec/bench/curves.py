"""``tim4rec bench curves``: two or more runs' validation curves side by side, at chosen epochs and times.

For a change that should not move the results (a precision, a faster kernel) or an ablation of the
training protocol: each run's validation NDCG@10 at the given epochs with its difference from the
first run, at the given wall times (training and validation seconds since the start: the last epoch
finished by then), and the mean seconds of training and validation per full epoch; written to
``curves.md`` and ``curves.png`` (the curves against epochs and against hours) beside the command.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
from pathlib import Path
from typing import Any

from tim4rec.errors import Tim4RecError
from tim4rec.io.tables import markdown_table
from tim4rec.training.results import epoch_wall_seconds


def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
        return {"path": path, "epochs": {e["epoch"]: e for e in results["epochs"]}, "config": results["config"]}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise Tim4RecError(f"{path}: not a run's results.json ({error})") from None


def _label(run: dict[str, Any]) -> str:
    """The run's model and what sets it apart, and its mean seconds of training and validation per full epoch."""
    config = run["config"]
    model = config["model"] + (f" ({config['time_mode']})" if config.get("time_mode") else "")
    precision = {"off": "float32"}.get(config.get("mixed_precision", "off"), config.get("mixed_precision"))
    extras = [f"{key} {config[key]}" for key in ("window_stride", "time_order", "time_values")
              if config.get(key) not in (None, "exact")]  # fmt: skip
    compiled = "compiled" if config.get("compile") else "eager"
    full = [e for e in run["epochs"].values() if not e.get("partial")] or list(run["epochs"].values())
    train = statistics.mean(e["train_seconds"] for e in full)
    valid = statistics.mean(e["valid_seconds"] for e in full)
    return (
        ", ".join([model, precision, compiled, *extras])
        + f": {train:.1f} s of training + {valid:.1f} s of validation per epoch"
    )


def _by_time(run: dict[str, Any], seconds: float, metric: str) -> str | None:
    """The metric of the last epoch finished within ``seconds`` of training and validation, with its epoch."""
    elapsed, reached = 0.0, None
    for epoch in sorted(run["epochs"]):
        entry = run["epochs"][epoch]
        elapsed += epoch_wall_seconds(entry)
        if elapsed > seconds:
            break
        reached = entry
    return None if reached is None else f"{reached['valid'][metric]:.4f} (epoch {reached['epoch']})"


def _plot(runs: list[dict[str, Any]], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(12, 4.2))
    for index, current in enumerate(runs):
        entries = [current["epochs"][e] for e in sorted(current["epochs"])]
        values = [e["valid"][metric] for e in entries]
        hours, elapsed = [], 0.0
        for e in entries:
            elapsed += epoch_wall_seconds(e)
            hours.append(elapsed / 3600)
        label = f"run {index + 1}: {_label(current).split(':')[0]}"
        by_epoch.plot([e["epoch"] for e in entries], values, label=label)
        by_time.plot(hours, values, label=label)
    for axis, xlabel in ((by_epoch, "epoch"), (by_time, "hours of training and validation")):
        axis.set_xlabel(xlabel)
        axis.set_ylabel(f"validation {metric.upper()}")
        axis.grid(alpha=0.3)
    by_epoch.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(
    paths: list[str], epochs: list[int], output: Path, metric: str = "ndcg@10", seconds: list[float] | None = None
) -> str:
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
    command += " --epochs " + " ".join(map(str, epochs))
    text = f"# Validation {metric.upper()} by epoch\n\n{listing}\n\n" + markdown_table(rows, columns)
    if seconds:
        command += " --seconds " + " ".join(f"{t:g}" for t in seconds)
        timed = [
            {"seconds": f"{t:g}", **{f"run{i}": _by_time(r, t, metric) for i, r in enumerate(runs)}} for t in seconds
        ]
        time_columns = [("seconds", "seconds")] + [(f"run{i}", f"run {i + 1}") for i in range(len(runs))]
        text += "\nAt equal wall time (the last epoch finished by then):\n\n" + markdown_table(timed, time_columns)
    command += f" --output {shlex.quote(str(output))}"
    text += f"\n`{command}`\n"
    output.mkdir(parents=True, exist_ok=True)
    (output / "curves.md").write_text(text)
    _plot(runs, output / "curves.png", metric)
    return text


HELP = "runs' validation curves side by side at chosen epochs and wall times"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench curves``."""
    parser.add_argument("results", nargs="+", help="results.json of each run (the first is the reference)")
    parser.add_argument("--epochs", nargs="+", type=int, default=[5, 10, 20, 40])
    parser.add_argument(
        "--seconds", nargs="+", type=float, help="also compare at these seconds of training and validation"
    )
    parser.add_argument("--output", required=True, help="folder for curves.md")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench curves``: write curves.md and print it."""
    print(run(args.results, args.epochs, Path(args.output), seconds=args.seconds))
    return 0
