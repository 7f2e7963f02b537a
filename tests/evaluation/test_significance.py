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


def test_a_swapped_comparison_is_the_comparison_with_its_arguments_swapped():
    rng = np.random.default_rng(2)
    users = [f"u{i}" for i in range(500)]
    a = {u: float(v) for u, v in zip(users, rng.random(500))}
    b = {u: v - 0.02 + 0.3 * rng.standard_normal() for u, v in a.items()}
    forward, backward = paired_comparison(a, b, resamples=1000).swapped(), paired_comparison(b, a, resamples=1000)
    assert forward.users == backward.users and forward.p_value == backward.p_value
    assert (forward.difference, forward.low, forward.high) == pytest.approx(
        (backward.difference, backward.low, backward.high), abs=1e-12
    )
    assert forward.low < forward.high
    assert str(paired_comparison(a, a, resamples=10).swapped().difference) == "0.0"  # not "-0.0"


def test_per_user_values_average_seeds():
    runs = [{"test_ranks": {"users": ["a", "b"], "ranks": [1, 20]}},
            {"test_ranks": {"users": ["a", "b"], "ranks": [3, 1]}}]  # fmt: skip
    assert per_user_ndcg(runs, 10) == pytest.approx({"a": 0.75, "b": 0.5})
