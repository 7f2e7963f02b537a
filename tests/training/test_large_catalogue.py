"""A synthetic catalogue of a million items: a training step with the sampled softmax and full-ranking
scoring of a batch, within a stated memory bound (measured in a fresh process by bench catalogue)."""

from __future__ import annotations

from tim4rec.bench import common

MEMORY_BOUND_MIB = 2560  # item embedding 244 MiB + its gradients + Adam's two moments, and the rest


def test_a_million_items_train_a_step_and_score_a_batch_within_the_bound():
    row = common.run_point(
        "tim4rec.bench.catalogue",
        {"items": 1_000_000, "loss": "sampled", "negatives": 1024, "windows": 4, "length": 50, "users": 256,
         "threads": 1, "repeats": 1},
        memory_limit_gib=None,
    )  # fmt: skip
    assert "error" not in row, row
    assert row["parameters"] > 64_000_000 and row["targets"] == 200
    assert row["peak_mib"] < MEMORY_BOUND_MIB, row
    # the full softmax's logits alone would be 200 x 10^6 floats = 763 MiB, its probabilities as much again
