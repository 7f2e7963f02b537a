"""``tim4rec bench speed``: step time, model FLOP utilisation and peak memory against length.

For each model, sequence length and dropout setting, one subprocess builds the model (64-d
defaults, ``max_seq_length`` = the length) on random full-length histories (3416 items by default:
ML-1M's count) and measures, after warm-up, the median and spread of

- ``causal``: a training step in the causal regime (loss at every position of ``batch``
  windows, as every causal model trains by default) -> backward -> Adam step (causal models only);
- ``readout``: a training step with the loss at the read-out position only (the prefix regime)
  on ``batch`` histories;
- ``infer``: ``full_sort_predict`` under ``torch.no_grad`` on ``infer_batch`` histories;
- peak memory above the process's baseline (max RSS on a CPU; ``max_memory_allocated`` on a GPU);
- with ``--onnx``: the same inference batch through onnxruntime (the model's scoring path exported as
  ``tim4rec export`` does, checked against the eager model; float32 rows of exportable models, on CPU),
  beside the eager time.

Each point runs in one or more precisions (``--precision off bf16``: the training step under
``mixed_precision``, inference with the forward under autocast and float32 scores), side by side,
each row with its speed-up over float32. Each time comes with two model FLOP utilisations, both
over the matmul rate of the row's precision measured in the same subprocess (the ratio is stable
where seconds move with the machine's load): ``MFU`` counts the model's FLOPs once on the eager
reference path (:mod:`tim4rec.bench.flops`: the same for every implementation), ``MFU counted``
the FLOPs that ``FlopCounterMode`` sees in the timed path itself (fused output layer, chunked scan). Steps run as
training does (fused output layer and loss, denormals flushed, freed memory reused) and eagerly,
or compiled with ``torch.compile`` (``--compile``; each row says which). Models run at their
configured dropout and with every dropout set to 0 (PyTorch's fused attention leaves its fast
path on a CPU when attention dropout is on). Results go to CSV, markdown and a log-log PNG, with
ratios against SASRec from the same run and the machine's load at start.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tim4rec.bench import common
from tim4rec.bench.common import machine_description, time_call

DEFAULT_MODELS = ("sasrec", "tim4rec", "ssd4rec", "mamba4rec")
DEFAULT_LENGTHS = (50, 200, 800, 3200)


def _dropout_free(name: str) -> dict[str, Any]:
    from tim4rec.models import model_defaults

    return {
        key: 0.0
        for key, value in model_defaults(name).items()
        if ("dropout" in key or "drop_out" in key) and isinstance(value, float)
    }


MEASURES = ("causal", "readout", "infer")
PRECISION_DTYPES = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def measure_point(
    model_name: str, length: int, *, threads: int, flush_denormal: bool = True, **point: Any
) -> dict[str, Any]:
    """One (model, length, dropout) point, in the calling process, under the runtime settings training uses.

    ``point``: batch, infer_batch, items, dropout (bool), device, warmup, repeats, hyperparameters
    (dict), compile (bool).
    """
    from tim4rec.runtime import runtime_settings

    compile = point.pop("compile", False)
    with runtime_settings(
        threads=threads, flush_denormal=flush_denormal, reuse_memory=True, compile=compile
    ) as runtime:
        row = _measure_point(model_name, length, **point)
    return {**row, "threads": runtime.threads, "flush_denormal": runtime.flush_denormal,
            "mode": "compiled" if runtime.compiled else "eager"}  # fmt: skip


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
    infer_batch: int = 256,
    precision: str = "off",
    onnx: bool = False,
) -> dict[str, Any]:
    from tim4rec.bench.flops import counted_flops, matmul_rate, random_batch, step_flops
    from tim4rec.models import create
    from tim4rec.ops.precision import mixed_precision
    from tim4rec.training.loss import NextItemLoss
    from tim4rec.training.optimizer import adam

    torch.manual_seed(0)
    extra = dict(hyperparameters)
    if not dropout:
        extra.update(_dropout_free(model_name))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if device.startswith("cuda") else common.max_rss_bytes()
    model = create(model_name, items, length, **extra).to(device)
    loss = NextItemLoss(model, fused=True, mixed_precision=precision)
    optimizer = adam(model.parameters(), lr=1e-3)
    batches = {
        "causal": random_batch("causal", batch, length, items) if model.causal else None,
        "readout": random_batch("prefix", batch, length, items),
        "infer": random_batch("prefix", infer_batch, length, items).to(device),
    }

    def train_step(cpu_batch) -> None:
        prepared = model.prepare_training_batch(cpu_batch).to(device)
        optimizer.zero_grad(set_to_none=True)
        total, count = loss(prepared)
        (total / max(count, 1)).backward()
        optimizer.step()

    def infer() -> None:  # as evaluation and serving score: the forward in the precision, scores in float32
        infer_batch_ = batches["infer"]
        with torch.no_grad():
            with mixed_precision(precision, torch.device(device).type):
                hidden = model.predict_hidden(infer_batch_.item_seq, infer_batch_.item_seq_len, infer_batch_.timestamps)
            model.item_scores(hidden.float())

    rate = matmul_rate(device, dtype=PRECISION_DTYPES[precision])
    row: dict[str, Any] = {
        "model": model_name, "precision": precision, "dtype": str(PRECISION_DTYPES[precision]).removeprefix("torch."),
        "length": length, "dropout": "on" if dropout else "off",
        "batch": batch, "infer_batch": infer_batch, "items": items,
    }  # fmt: skip
    for what in MEASURES:
        if batches[what] is None:
            continue
        model.train(what != "infer")
        function = infer if what == "infer" else (lambda b=batches[what]: train_step(b))
        timing = time_call(function, warmup=warmup, repeats=repeats, device=device)
        flops = step_flops(model_name, extra, items, length, infer_batch if what == "infer" else batch, what)
        counted = counted_flops(function)
        row.update({
            f"{what}_s": timing["median"], f"{what}_min_s": timing["min"], f"{what}_max_s": timing["max"],
            f"{what}_gflop": flops / 1e9, f"{what}_mfu": flops / timing["median"] / rate,
            f"{what}_counted_gflop": counted / 1e9, f"{what}_counted_mfu": counted / timing["median"] / rate,
        })  # fmt: skip
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else common.max_rss_bytes()
    row.update({
        "matmul_gflops": rate / 1e9, "peak_mib": (peak - baseline) / 2**20, "repeats": repeats, "device": device,
        "parameters": sum(p.numel() for p in model.parameters()),
    })  # fmt: skip
    # after the peak is read: exporting takes memory that the model's own inference does not
    if onnx and precision == "off" and device == "cpu":
        row.update(_onnx_inference(model, model_name, batches["infer"], warmup=warmup, repeats=repeats))
        row["infer_onnx_speedup"] = row["infer_s"] / row["infer_onnx_s"] if "infer_onnx_s" in row else None
    return row


def _onnx_inference(model: torch.nn.Module, name: str, batch, *, warmup: int, repeats: int) -> dict[str, Any]:
    """onnxruntime's time for the inference batch (its intra-op threads: torch's), or why it has none."""
    import tempfile

    from tim4rec.errors import Tim4RecError
    from tim4rec.serving.export import export_scoring, feeds

    with tempfile.TemporaryDirectory() as folder:
        try:
            _, session, _, worst = export_scoring(
                model.eval(), Path(folder, "model.onnx"), name=name, threads=torch.get_num_threads()
            )
        except Tim4RecError as error:
            return {"onnx": str(error)}
        named = feeds((batch.item_seq, batch.item_seq_len, batch.timestamps))
        timing = time_call(lambda: session.run(None, named), warmup=warmup, repeats=repeats, device="cpu")
    return {"infer_onnx_s": timing["median"], "infer_onnx_max_abs_difference": worst}


def _run_point_subprocess(arguments: dict[str, Any], memory_limit_gib: float | None) -> dict[str, Any]:
    row = common.run_point("tim4rec.bench.speed", arguments, memory_limit_gib)
    if "error" in row:
        row = {
            "model": arguments["model_name"], "length": arguments["length"],
            "dropout": "on" if arguments["dropout"] else "off", **row,
        }  # fmt: skip
    return row


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("causal_s", "causal training step", "seconds"), ("infer_s", "inference", "seconds"),
              ("peak_mib", "peak memory above baseline", "MiB")]  # fmt: skip
    figure, axes = plt.subplots(1, len(panels), figsize=(15, 4.2))
    for model, dropout in sorted({(r["model"], r["dropout"]) for r in rows if "infer_s" in r}):
        points = sorted((r for r in rows if r["model"] == model and r["dropout"] == dropout), key=lambda r: r["length"])
        style = "-" if dropout == "off" else "--"
        for axis, (key, _, _) in zip(axes, panels):
            shown = [p for p in points if p.get(key) is not None]
            if shown:
                lengths = [p["length"] for p in shown]
                values = [max(p[key], 1e-3) for p in shown]
                axis.plot(lengths, values, style, marker="o", label=f"{model} (dropout {dropout})")
    for axis, (_, title, unit) in zip(axes, panels):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel(unit)
        axis.set_title(title)
        axis.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
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
    infer_batch: int = 256,
    compile: bool = False,
    precisions: tuple[str, ...] = ("off",),
    onnx: bool = False,
) -> str:
    machine = machine_description(threads, device)
    rows = []
    for model in models:
        for dropout in dropouts:
            for length in lengths:
                for precision in precisions:  # side by side: the same point in each precision, one after another
                    arguments = {
                        "model_name": model, "length": length, "batch": batch, "infer_batch": infer_batch,
                        "items": items, "dropout": dropout, "device": device, "threads": threads, "warmup": warmup,
                        "repeats": repeats, "hyperparameters": hyperparameters.get(model, {}),
                        "flush_denormal": flush_denormal, "compile": compile, "precision": precision,
                        "onnx": onnx,
                    }  # fmt: skip
                    row = _run_point_subprocess(arguments, memory_limit_gib)
                    row.setdefault("precision", precision)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    rows.append(row)
    _add_ratios(rows, "sasrec", lambda r: (r["length"], r["dropout"], r["precision"]), lambda r: r["model"] == "sasrec")
    _add_ratios(rows, "float32", lambda r: (r["model"], r["length"], r["dropout"]), lambda r: r["precision"] == "off")
    output.mkdir(parents=True, exist_ok=True)
    plot(rows, output / "speed.png")
    columns = [
        ("model", "model"),
        ("dtype", "precision"),
        ("dropout", "dropout"),
        ("mode", "mode"),
        ("length", "L"),
    ]
    for what, title in (("causal", "causal step"), ("readout", "read-out step"), ("infer", "inference")):
        columns += [(f"{what}_s", f"{title} s"), (f"{what}_mfu", "MFU"), (f"{what}_counted_mfu", "MFU counted")]
        columns += [(f"{what}_vs_float32", "speed-up over float32")] * (len(precisions) > 1)
        columns += [(f"{what}_vs_sasrec", "x SASRec")]
    if onnx:
        columns += [("infer_onnx_s", "onnxruntime inference s"), ("infer_onnx_speedup", "onnxruntime speed-up")]
    columns += [("peak_mib", "peak MiB"), ("memory_vs_sasrec", "x SASRec"), ("error", "error")]
    rates = {
        precision: statistics.median(
            r["matmul_gflops"] for r in rows if "matmul_gflops" in r and r["precision"] == precision
        )
        for precision in precisions
        if any("matmul_gflops" in r and r["precision"] == precision for r in rows)
    }
    rate_text = ", ".join(f"{'float32' if p == 'off' else p} {g:.1f} GFLOP/s" for p, g in rates.items())
    return common.write_report(
        output, "speed",
        f"Speed, MFU and memory (training batch {batch}, inference batch {infer_batch}, {items} items, {device}, "
        f"{threads} thread(s), denormals {'flushed to zero' if flush_denormal else 'kept'})",
        "MFU: the model's FLOPs (eager reference path, chunk 32) per second over the matmul rate of the row's "
        "precision in the same subprocess; MFU counted: the FLOPs FlopCounterMode sees in the timed path itself, over "
        f"the same rate (median matmul rates over the points: {rate_text}). Speed-up over float32: the float32 row's "
        "time over this row's, measured side by side."
        + (" onnxruntime: the inference batch's scores through the exported graph (`tim4rec export`, checked "
           "against the eager model to 1e-4; float32 rows of TiM4Rec, SASRec and GRU4Rec), its speed-up the eager "
           "inference time over it." if onnx else ""),
        machine, rows, columns,
    )  # fmt: skip


def _add_ratios(rows: list[dict[str, Any]], name: str, key: Callable, is_base: Callable) -> None:
    """``<measure>_vs_<name>`` of every row: the time over that of its base row (the row with the same ``key``
    for which ``is_base`` holds); for ``sasrec`` also ``memory_vs_sasrec``. A speed-up over float32 is the inverse."""
    bases = {key(r): r for r in rows if is_base(r) and "infer_s" in r}
    for row in rows:
        base = bases.get(key(row))
        if base is None or "infer_s" not in row:
            continue
        for what in MEASURES:
            if row.get(f"{what}_s") and base.get(f"{what}_s"):
                ratio = row[f"{what}_s"] / base[f"{what}_s"]
                row[f"{what}_vs_{name}"] = 1 / ratio if name == "float32" else ratio
        if name == "sasrec":
            row["memory_vs_sasrec"] = row["peak_mib"] / base["peak_mib"] if base["peak_mib"] > 0 else None


HELP = "training-step and inference time and peak memory against sequence length"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench speed``."""
    parser.add_argument("--models", nargs="+", default=["sasrec", "tim4rec", "ssd4rec", "mamba4rec"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[50, 200, 800, 3200])
    parser.add_argument("--batch", type=int, default=16, help="histories (windows) per training step")
    parser.add_argument("--infer-batch", type=int, default=256, help="histories per inference call")
    parser.add_argument("--compile", action="store_true", help="run the steps through torch.compile")
    parser.add_argument(
        "--onnx", action="store_true", help="time inference through onnxruntime too (exportable models, float32)"
    )
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["off"],
        choices=["off", "bf16", "fp16"],
        help="mixed_precision settings to measure side by side (off: float32)",
    )
    parser.add_argument("--items", type=int, default=3416, help="number of items (default: ML-1M's 3416)")
    parser.add_argument("--dropout", choices=["both", "on", "off"], default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--memory-limit-gib", type=float, default=16.0, help="address-space limit of each measuring subprocess"
    )
    parser.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="MODEL:KEY=VALUE",
        help="a hyper-parameter for one model (repeatable)",
    )
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush denormal numbers to zero (training flushes them by default)",
    )
    parser.add_argument("--output", default="docs/benchmarks/speed")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench speed``: measure, write the report, print its table."""
    from tim4rec.config import parse_override

    overrides: dict[str, dict] = {}
    for text in args.model_set:
        model, _, assignment = text.partition(":")
        key, value = parse_override(assignment)
        overrides.setdefault(model, {})[key] = value
    dropouts = {"both": [True, False], "on": [True], "off": [False]}[args.dropout]
    print(
        run(
            args.models,
            args.lengths,
            batch=args.batch,
            items=args.items,
            dropouts=dropouts,
            device=args.device,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            output=Path(args.output),
            memory_limit_gib=args.memory_limit_gib,
            hyperparameters=overrides,
            flush_denormal=not args.keep_denormals,
            infer_batch=args.infer_batch,
            compile=args.compile,
            precisions=tuple(args.precision),
            onnx=args.onnx,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return common.point_main("tim4rec bench speed", measure_point, argv)


if __name__ == "__main__":
    raise SystemExit(main())
