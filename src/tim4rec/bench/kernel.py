"""``tim4rec bench kernel``: the SSD scan against its alternatives, over sequence lengths.

Same problem size for every method (batch b, h heads of p channels, state size n, one group):

- ``ssd_chunked``: :func:`tim4rec.ops.ssd_scan`, the chunked SSD algorithm (forward, and
  forward + backward);
- ``ssd_recurrent``: the plain step-by-step recurrence (:func:`tim4rec.ops.ssd_step` in a loop);
- ``ssd_quadratic``: :func:`tim4rec.ops.ssd_quadratic`, the attention-like form with the full (l, l)
  decay matrix, quadratic in l;
- ``mamba1_scan``: the Mamba-1 selective scan of the baselines (one decay per channel and state
  entry) on d = h p channels with the same state size n.

Achieved GFLOP/s counts 2 x the multiply-adds of the chunked algorithm's forward matrix products
(per chunk: C B^T, its masked product with x, the chunk state, the inter-chunk output; plus the
state passing), divided by the measured forward time; the machine's float32 matmul figure
(1024 x 1024, same thread count) is measured in the same run for comparison.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tim4rec.bench.common import machine_description, time_call
from tim4rec.io.tables import markdown_table, write_csv

#: the kernels measured, imported where they run (``tim4rec --help`` imports this module for its options)
_KERNELS = {
    "ssd_scan": "tim4rec.ops",
    "ssd_quadratic": "tim4rec.ops",
    "ssd_step": "tim4rec.ops",
    "selective_scan": "tim4rec.ops.selective_scan",
}


def recurrent_forward(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor):
    """:func:`tim4rec.ops.ssd_step` in a loop over time: what streaming one event at a time costs."""
    from tim4rec.ops import ssd_step

    b, l, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(l):
        y, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t])
        ys.append(y)
    return torch.stack(ys, 1)


def chunked_forward_flops(b: int, l: int, h: int, p: int, n: int, Q: int, g: int = 1) -> float:
    chunks = -(-l // Q)
    macs = (
        g * chunks * Q * Q * n  # C B^T per chunk and group
        + h * chunks * Q * Q * p  # masked (Q, Q) product with x
        + h * chunks * Q * p * n  # chunk states
        + h * chunks * p * n  # state passing
        + h * chunks * Q * p * n  # inter-chunk outputs
    )
    return 2.0 * b * macs


def _forward_backward(x, dt, A, B, C, chunk: int) -> None:
    from tim4rec.ops import ssd_scan

    ssd_scan(x, dt, A, B, C, chunk).sum().backward()


def matmul_gflops(device: str) -> float:
    """The float32 1024 x 1024 matmul rate in GFLOP/s, at the current thread count."""
    from tim4rec.bench.flops import matmul_rate  # imports the models

    return matmul_rate(device) / 1e9


def run(lengths: list[int], *, threads: int, compile: bool = False, **options: Any) -> str:
    """Time every method at every length under ``threads`` threads; write kernel.md, .csv and .png.

    ``compile``: the chunked scan through ``torch.compile`` (:mod:`tim4rec.ops.compile`).
    """
    from tim4rec.runtime import runtime_settings

    with runtime_settings(threads=threads, reuse_memory=True, compile=compile) as runtime:  # as training runs
        return _run(lengths, threads=threads, mode="compiled" if runtime.compiled else "eager", **options)


def _run(
    lengths: list[int],
    *,
    batch: int,
    heads: int,
    head_dim: int,
    state: int,
    chunk: int,
    threads: int,
    device: str,
    warmup: int,
    repeats: int,
    max_recurrent: int,
    max_quadratic: int,
    output: Path,
    mode: str = "eager",
) -> str:
    from tim4rec.ops import ssd_quadratic, ssd_scan
    from tim4rec.ops.selective_scan import selective_scan

    machine = machine_description(threads, device)
    matmul = matmul_gflops(device)
    rows: list[dict[str, Any]] = []
    generator = torch.Generator().manual_seed(0)
    for l in lengths:
        b, h, p, n = batch, heads, head_dim, state
        x = torch.randn(b, l, h, p, generator=generator).to(device)
        dt = torch.rand(b, l, h, generator=generator).mul(0.1).add(0.001).to(device)
        A = -torch.rand(h, generator=generator).mul(15).add(1).to(device)
        B = torch.randn(b, l, 1, n, generator=generator).to(device)
        C = torch.randn(b, l, 1, n, generator=generator).to(device)
        flops = chunked_forward_flops(b, l, h, p, n, chunk)
        methods: dict[str, Callable[[], Any]] = {"ssd_chunked": partial(ssd_scan, x, dt, A, B, C, chunk)}
        if l <= max_quadratic:
            methods["ssd_quadratic"] = partial(ssd_quadratic, x, dt, A, B, C)
        if l <= max_recurrent:
            methods["ssd_recurrent"] = partial(recurrent_forward, x, dt, A, B, C)
        d = h * p
        u = x.reshape(b, l, d).transpose(1, 2).contiguous()
        delta = dt.repeat_interleave(p, dim=2).transpose(1, 2).contiguous()
        A1 = A.repeat_interleave(p)[:, None].expand(d, n).contiguous()
        B1, C1 = B[:, :, 0].transpose(1, 2).contiguous(), C[:, :, 0].transpose(1, 2).contiguous()
        methods["mamba1_scan"] = partial(selective_scan, u, delta, A1, B1, C1)
        for name, forward in methods.items():
            timing = time_call(
                forward,
                warmup=warmup if name != "ssd_recurrent" else 1,
                repeats=repeats if name != "ssd_recurrent" else 2,
                device=device,
            )
            row = {
                "method": name,
                "length": l,
                "forward_s": timing["median"],
                "forward_min_s": timing["min"],
                "forward_max_s": timing["max"],
            }
            if name == "ssd_chunked":
                row["gflops"] = flops / timing["median"] / 1e9
                row["matmul_fraction"] = row["gflops"] / matmul
                leaves = [t.detach().requires_grad_() for t in (x, dt, B, C)]
                backward = time_call(
                    partial(_forward_backward, *leaves[:2], A, *leaves[2:], chunk),
                    warmup=warmup,
                    repeats=repeats,
                    device=device,
                )
                row["fwd_bwd_s"] = backward["median"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    chunked = {r["length"]: r for r in rows if r["method"] == "ssd_chunked"}
    for row in rows:
        row["vs_chunked"] = row["forward_s"] / chunked[row["length"]]["forward_s"]
    output.mkdir(parents=True, exist_ok=True)
    write_csv(rows, output / "kernel.csv")
    _plot(rows, output / "kernel.png")
    columns = [
        ("method", "method"),
        ("length", "l"),
        ("forward_s", "forward s"),
        ("forward_min_s", "min"),
        ("forward_max_s", "max"),
        ("vs_chunked", "x chunked"),
        ("fwd_bwd_s", "fwd+bwd s"),
        ("gflops", "GFLOP/s"),
        ("matmul_fraction", "of matmul"),
    ]
    text = (
        f"# SSD kernel (b={batch}, h={heads}, p={head_dim}, n={state}, chunk {chunk}, {device}, "
        f"{threads} thread(s), {mode})\n\n"
        f"float32 matmul (1024 x 1024) in this run: {matmul:.1f} GFLOP/s\n\nMachine: {json.dumps(machine)}\n\n"
        + markdown_table(rows, columns)
    )
    (output / "kernel.md").write_text(text)
    return text


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for method in sorted({r["method"] for r in rows}):
        points = sorted((r for r in rows if r["method"] == method), key=lambda r: r["length"])
        axis.plot([p["length"] for p in points], [p["forward_s"] for p in points], marker="o", label=method)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("sequence length")
    axis.set_ylabel("forward seconds")
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


HELP = "SSD scan vs recurrence, quadratic form and the Mamba-1 scan"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``tim4rec bench kernel``."""
    parser.add_argument("--lengths", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--state", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-recurrent", type=int, default=2048, help="longest length for the step-by-step loop")
    parser.add_argument("--max-quadratic", type=int, default=2048, help="longest length for the (l, l) form")
    parser.add_argument("--compile", action="store_true", help="run the chunked scan through torch.compile")
    parser.add_argument("--output", default="docs/benchmarks/kernel")


def command(args: argparse.Namespace) -> int:
    """``tim4rec bench kernel``: measure, write the report, print its table."""
    print(
        run(
            args.lengths,
            batch=args.batch,
            heads=args.heads,
            head_dim=args.head_dim,
            state=args.state,
            chunk=args.chunk,
            threads=args.threads,
            device=args.device,
            warmup=args.warmup,
            repeats=args.repeats,
            max_recurrent=args.max_recurrent,
            max_quadratic=args.max_quadratic,
            output=Path(args.output),
            compile=args.compile,
        )
    )
    return 0


def __getattr__(name: str) -> Any:
    """The kernels (``ssd_scan``, ``ssd_quadratic``, ``ssd_step``, ``selective_scan``) as attributes of this module,
    imported when first asked for."""
    if name in _KERNELS:
        import importlib

        return getattr(importlib.import_module(_KERNELS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
