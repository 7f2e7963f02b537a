"""The data pipeline's peak memory and time: read, filter, split, build samples, batch one epoch.

For each training regime, one subprocess loads a dataset the way training does (the packaged
TiM4Rec config, L = 200, 2,048 targets per step), builds the training samples of the regime,
draws every batch of one shuffled epoch and every validation and test batch (no model), and
records the peak resident memory over the process's start and the seconds of each stage.

Run: ``tim4rec bench data ml-1m`` -> ``docs/benchmarks/data/data.{md,csv}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tim4rec.bench import common
from tim4rec.bench.common import machine_description
from tim4rec.data.batches import REGIMES


def measure_point(*, dataset: str, regime: str, model: str = "tim4rec") -> dict[str, Any]:
    """One regime's pipeline in the calling process."""
    from tim4rec.config import load_config
    from tim4rec.training.experiment import rows_per_batch

    torch.set_num_threads(1)
    baseline = common.max_rss_bytes()
    started = time.perf_counter()
    config, _ = load_config(model=model, dataset=dataset, set_args=["show_progress=false"])
    data = config.data.load()
    loaded = time.perf_counter()
    samples = data.train_samples(regime)
    rows = rows_per_batch(config, samples.regime)  # the regime as the data stage parsed it
    batches = targets = 0
    for batch in data.iterate(samples, rows, generator=torch.Generator().manual_seed(0)):
        batches += 1
        targets += batch.n_targets
    trained = time.perf_counter()
    for split in ("valid", "test"):
        for _ in data.iterate(data.evaluation_samples(split), config.eval_batch_size):
            pass
    return {
        "dataset": dataset, "regime": regime, "interactions": int(data.interactions.n_interactions),
        "samples": len(samples), "targets": targets, "batches": batches, "load_s": loaded - started,
        "epoch_batches_s": trained - loaded, "evaluation_batches_s": time.perf_counter() - trained,
        "peak_mib": (common.max_rss_bytes() - baseline) / 2**20,
        "process_peak_mib": common.max_rss_bytes() / 2**20,
    }  # fmt: skip


def run(dataset: str, output: Path) -> str:
    rows = []
    for regime in REGIMES:
        row = {
            "dataset": dataset,
            "regime": regime,
            **common.run_point("tim4rec.bench.data", {"dataset": dataset, "regime": regime}, None),
        }
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    columns = [
        ("regime", "regime"), ("interactions", "interactions"), ("samples", "training samples"),
        ("targets", "targets per epoch"), ("batches", "batches"), ("load_s", "read + filter + split s"),
        ("epoch_batches_s", "one epoch's batches s"), ("evaluation_batches_s", "valid + test batches s"),
        ("peak_mib", "peak MiB over start"), ("process_peak_mib", "process peak MiB"), ("error", "error"),
    ]  # fmt: skip
    return common.write_report(
        output, "data",
        f"The data pipeline on {dataset}: peak memory and time (no model; L = 200, 2,048 targets per step)",
        "Each regime in a fresh process: the packaged TiM4Rec config's data settings, the training samples, "
        "every batch of one shuffled epoch and every validation and test batch. Peak over start: the resident "
        "memory the pipeline added to a process that had imported torch; process peak: all of it.",
        machine_description(1), rows, columns,
    )  # fmt: skip


HELP = "the data pipeline's peak memory and time in each regime"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench data``."""
    parser.add_argument("dataset", nargs="?", default="ml-1m")
    parser.add_argument("--output", default="docs/benchmarks/data")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench data``: measure, write the report, print its table."""
    print(run(args.dataset, Path(args.output)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.point_main("tim4rec bench data", measure_point, argv)


if __name__ == "__main__":
    raise SystemExit(main())
