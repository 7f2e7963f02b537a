"""Caser at MovieLens-1M shapes (L = 200, 64-d, nv 4, nh 8, 3,416 items) on one thread: a training step of the
prefix form (256 histories), scoring 256 histories, and a training step of the causal form (10 windows of
2L - 1 events, 7 of them a user's first with targets from position 0, as an ML-1M batch of 2,048 targets).

    PYTHONPATH=src python docs/benchmarks/caser-speed/measure.py > docs/benchmarks/caser-speed/<name>.json

Run it from a checkout of the code to time (an older one has no causal form: that part is skipped).
"""

import json
import os
import platform
import time

import torch

from tim4rec.data.batches import Batch
from tim4rec.models import create
from tim4rec.models.base import cross_entropy_terms

L, N_ITEMS, HISTORIES, WINDOWS, FIRST_WINDOWS, REPEATS = 200, 3416, 256, 10, 7, 3


def train_step(model: torch.nn.Module, batch: Batch) -> float:
    started = time.perf_counter()
    model.zero_grad()
    total, count = cross_entropy_terms(model, batch)
    (total / count).backward()
    return time.perf_counter() - started


def best_of(measure, repeats: int = REPEATS) -> float:
    measure()  # warm-up
    return min(measure() for _ in range(repeats))


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create("caser", N_ITEMS, L)
    items = torch.randint(1, N_ITEMS + 1, (HISTORIES, L), generator=generator)
    lengths = torch.randint(1, L + 1, (HISTORIES,), generator=generator)
    times = torch.ones(HISTORIES, L, dtype=torch.long)
    prefix = Batch("prefix", items, lengths, times, torch.randint(1, N_ITEMS + 1, (HISTORIES,), generator=generator))
    result = {"load_average": os.getloadavg(), "machine": platform.node(), "torch": torch.__version__}
    result["prefix_train_ms_per_sample"] = best_of(lambda: train_step(model, prefix)) / HISTORIES * 1e3

    def score() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            model.eval().full_sort_predict(items, lengths, times)
        model.train()
        return time.perf_counter() - started

    result["prefix_score_ms_per_history"] = best_of(score) / HISTORIES * 1e3
    if getattr(model, "history_span", None):
        width = 2 * L - 1
        windows = torch.randint(1, N_ITEMS + 1, (WINDOWS, width), generator=generator)
        target = torch.randint(1, N_ITEMS + 1, (WINDOWS, width), generator=generator)
        target[FIRST_WINDOWS:, : L - 1] = 0  # later windows: targets after L - 1 events of context
        target[:FIRST_WINDOWS, L:] = 0  # a user's first window: targets from its first event on
        causal = Batch("causal", windows, torch.full((WINDOWS,), width), torch.ones_like(windows), target)
        step = best_of(lambda: train_step(model, causal))
        result.update(causal_train_s_per_step=step, causal_targets=int(causal.n_targets),
                      causal_train_ms_per_target=step / causal.n_targets * 1e3)  # fmt: skip
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
