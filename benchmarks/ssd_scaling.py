"""Scaling benchmark: forward + backward time of ``ssd_scan`` versus sequence length (CPU, float32).

Example:
    PYTHONPATH=src python benchmarks/ssd_scaling.py --threads 1 --lengths 1024 2048 4096 --out ssd.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from tim4rec.ops.ssd import ssd_scan


def make_inputs(b: int, l: int, h: int, p: int, g: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mamba-2-like inputs: A = -exp(A_log), raw dt with dt_bias + softplus, per-head D; all require grad."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = {"x": r(b, l, h, p), "dt": r(b, l, h) - 2.0, "A": -torch.rand(h, generator=gen).add(0.5),
         "B": r(b, l, g, n), "C": r(b, l, g, n), "D": r(h), "dt_bias": 0.1 * r(h)}
    return {k: v.requires_grad_() for k, v in t.items()}


def time_fwd_bwd(t: dict[str, torch.Tensor], chunk: int, grad_y: torch.Tensor) -> float:
    """Seconds for one ssd_scan forward + backward."""
    for v in t.values():
        v.grad = None
    start = time.perf_counter()
    y = ssd_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True)
    y.backward(grad_y)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--headdim", type=int, default=32)
    ap.add_argument("--groups", type=int, default=1)
    ap.add_argument("--dstate", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=str, default=None, help="also write the markdown report to this file")
    args = ap.parse_args()

    load = os.getloadavg()
    torch.set_num_threads(args.threads)
    rows, medians = [], {}
    for l in args.lengths:
        t = make_inputs(args.batch, l, args.heads, args.headdim, args.groups, args.dstate)
        grad_y = torch.randn(args.batch, l, args.heads, args.headdim)
        for _ in range(args.warmup):
            time_fwd_bwd(t, args.chunk, grad_y)
        times = [time_fwd_bwd(t, args.chunk, grad_y) for _ in range(args.repeats)]
        medians[l] = statistics.median(times)
        rows.append(f"| {l} | {medians[l]:.4f} | {min(times):.4f} - {max(times):.4f} |")

    lines = [
        f"ssd_scan forward+backward, float32, b={args.batch} h={args.heads} p={args.headdim} g={args.groups} "
        f"n={args.dstate} chunk={args.chunk}, median of {args.repeats} after {args.warmup} warm-up",
        "",
        "| length | median s | spread (min - max) s |",
        "|---:|---:|---|",
        *rows,
        "",
    ]
    lo, hi = min(args.lengths), max(args.lengths)
    if lo != hi:
        lines.append(f"time({hi}) / time({lo}) = {medians[hi] / medians[lo]:.2f} (length ratio {hi / lo:g})")
    lines.append(f"threads: {torch.get_num_threads()}, torch {torch.__version__}, "
                 f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
