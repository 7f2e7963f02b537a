"""Step time and peak memory against catalogue size, for the full and the sampled softmax.

For each catalogue size (10^4 to 10^6 items) and loss, one subprocess builds a 64-d TiM4Rec
(L = 200), takes training steps on random causal windows (``--windows`` of them per step: 2,048
targets at 10 windows, the paper's batch) with Adam, then scores ``--users`` histories for full
ranking in blocks of items (:mod:`tim4rec.evaluation.scoring`). It records the median step time,
the scoring time and the subprocess's peak resident memory over its start, so the rows compare
the loss (the (targets x items) logits of the full softmax against the (targets x K) ones of the
sampled softmax) and the item embedding with its Adam state (both grow with the catalogue).

Run: ``tim4rec bench catalogue`` -> ``docs/benchmarks/catalogue/catalogue.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from tim4rec.bench import common
from tim4rec.bench.common import machine_description, time_call

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
LOSSES = ("full", "sampled")


def measure_point(
    *,
    items: int,
    loss: str,
    negatives: int,
    windows: int,
    length: int,
    users: int,
    threads: int,
    repeats: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """One (catalogue size, loss) point in the calling process."""
    from tim4rec.bench.flops import random_batch
    from tim4rec.evaluation.scoring import blocked_target_ranks
    from tim4rec.models import create
    from tim4rec.runtime import runtime_settings
    from tim4rec.training.loss import NextItemLoss
    from tim4rec.training.negatives import NegativeSampler
    from tim4rec.training.optimizer import adam

    with runtime_settings(threads=threads, flush_denormal=True, reuse_memory=True):
        baseline = common.max_rss_bytes()
        torch.manual_seed(0)
        model = create("tim4rec", items, length, dropout_prob=0.0, time_drop_out=0.0).to(device)
        sampler = NegativeSampler(negatives, items, "uniform") if loss == "sampled" else None
        objective = NextItemLoss(model, fused=True, sampler=sampler)
        optimizer = adam(model.parameters(), lr=1e-3)
        batch = model.prepare_training_batch(random_batch("causal", windows, length, items)).to(device)
        evaluation = random_batch("prefix", users, length, items).to(device)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            total, count = objective(batch)
            (total / count).backward()
            optimizer.step()

        def score() -> None:
            with torch.no_grad():
                hidden = model.predict_hidden(evaluation.item_seq, evaluation.item_seq_len, evaluation.timestamps)
                blocked_target_ranks(hidden, *model.output_layer(), evaluation.target)

        model.train()
        step_timing = time_call(step, warmup=1, repeats=repeats, device=device)
        after_training = common.max_rss_bytes()
        model.eval()
        score_timing = time_call(score, warmup=1, repeats=repeats, device=device)
        return {
            "items": items, "loss": loss, "negatives": negatives if loss == "sampled" else None,
            "targets": int(batch.n_targets), "step_s": step_timing["median"], "step_min_s": step_timing["min"],
            "train_peak_mib": (after_training - baseline) / 2**20, "users": users,
            "score_s": score_timing["median"], "peak_mib": (common.max_rss_bytes() - baseline) / 2**20,
            "parameters": sum(p.numel() for p in model.parameters()), "threads": threads,
        }  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for loss in LOSSES:
        points = [r for r in rows if r.get("loss") == loss and "step_s" in r]
        sizes = [r["items"] for r in points]
        time_axis.plot(sizes, [r["step_s"] for r in points], marker="o", label=f"{loss} softmax")
        memory_axis.plot(sizes, [r["train_peak_mib"] for r in points], marker="o", label=f"{loss} softmax")
    for axis, label in ((time_axis, "training step (s)"), (memory_axis, "peak memory of training (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("items in the catalogue")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(
    sizes: list[int],
    *,
    negatives: int,
    windows: int,
    length: int,
    users: int,
    threads: int,
    repeats: int,
    output: Path,
    memory_limit_gib: float | None,
    device: str = "cpu",
) -> str:
    machine = machine_description(threads, device)
    rows = []
    for items in sizes:
        for loss in LOSSES:
            arguments = {
                "items": items, "loss": loss, "negatives": negatives, "windows": windows, "length": length,
                "users": users, "threads": threads, "repeats": repeats, "device": device,
            }  # fmt: skip
            row = common.run_point("tim4rec.bench.catalogue", arguments, memory_limit_gib)
            row = {"items": items, "loss": loss, **row}
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    output.mkdir(parents=True, exist_ok=True)
    plot(rows, output / "catalogue.png")
    columns = [
        ("items", "items"), ("loss", "loss"), ("negatives", "K"), ("targets", "targets per step"),
        ("step_s", "step s"), ("train_peak_mib", "training peak MiB"), ("score_s", f"scoring {users} users s"),
        ("peak_mib", "peak MiB"), ("parameters", "parameters"), ("error", "error"),
    ]  # fmt: skip
    return common.write_report(
        output, "catalogue",
        f"Training step and scoring against catalogue size (TiM4Rec 64-d, L = {length}, {windows} windows "
        f"per step, {device}, {threads} thread(s))",
        "Full: cross-entropy over every item (the fused output layer and loss); sampled: over the target and "
        f"K = {negatives} uniform negatives shared by the step, log-Q corrected. Scoring: full ranking of "
        f"{users} users over every item in blocks of 65,536 items. Memory: the subprocess's peak resident "
        "memory over its start (training peak: after the training steps; peak: after scoring too).",
        machine, rows, columns,
    )  # fmt: skip


HELP = "training step and scoring time and memory against catalogue size, full vs sampled softmax"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench catalogue``."""
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--negatives", type=int, default=1024, help="K of the sampled softmax")
    parser.add_argument("--windows", type=int, default=10, help="causal windows per training step")
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--users", type=int, default=256, help="histories scored in the scoring measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--output", default="docs/benchmarks/catalogue")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench catalogue``: measure, write the report, print its table."""
    print(run(args.sizes, negatives=args.negatives, windows=args.windows, length=args.length,
              users=args.users, threads=args.threads, repeats=args.repeats, output=Path(args.output),
              memory_limit_gib=args.memory_limit_gib, device=args.device))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.point_main("tim4rec bench catalogue", measure_point, argv)


if __name__ == "__main__":
    raise SystemExit(main())
