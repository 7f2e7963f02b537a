"""Paired comparisons from per-user ranks."""

import numpy as np
import pytest

from tim4rec.evaluation.significance import ndcg_at, paired_comparison, per_user_ndcg


def test_ndcg_from_ranks():
    assert ndcg_at(np.array([1, 3, 11]), 10).tolist() == pytest.approx([1.0, 0.5, 0.0])


def test_a_clear_difference_and_no_difference():
    rng = np.random.default_rng(1)
    users = [f"u{i}" for i in range(2000)]
    base = {u: float(v) for u, v in zip(users, rng.random(2000))}
    better = {u: v + 0.05 + 0.01 * rng.standard_normal() for u, v in base.items()}
    clear = paired_comparison(better, base, resamples=2000)
    assert clear.p_value < 0.001 and clear.low > 0.04 and clear.high < 0.06 and clear.users == 2000
    noise = {u: v + 0.2 * rng.standard_normal() for u, v in base.items()}
    same = paired_comparison(noise, base, resamples=2000)
    assert same.p_value > 0.01 and same.low < 0 < same.high


def test_per_user_values_average_seeds():
    runs = [{"test_ranks": {"users": ["a", "b"], "ranks": [1, 20]}},
            {"test_ranks": {"users": ["a", "b"], "ranks": [3, 1]}}]  # fmt: skip
    assert per_user_ndcg(runs, 10) == pytest.approx({"a": 0.75, "b": 0.5})
