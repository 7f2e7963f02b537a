"""Paired comparisons of two models on the same users, from their per-user test ranks.

With one test target per user, a model's NDCG@k for a user is ``1 / log2(rank + 1)`` if the rank
is at most k. The two models' per-user values are paired by user; the difference of their means
gets a 95% bootstrap interval (users resampled) and a two-sided p-value from a sign-flip
permutation test (under the null hypothesis that the models are exchangeable, each user's
difference is as likely positive as negative). Both use ``resamples`` draws from a fixed seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    difference: float  # mean over users of (a - b)
    low: float  # 95% bootstrap interval of the difference
    high: float
    p_value: float  # two-sided, sign-flip permutation test
    users: int

    def swapped(self) -> PairedComparison:
        """The same comparison read the other way round (b - a): the difference and interval negated,
        the same p-value; what :func:`paired_comparison` gives with its arguments swapped."""
        turned = (0.0 - value for value in (self.difference, self.high, self.low))  # 0.0 - x: no "-0.0000"
        return PairedComparison(*turned, self.p_value, self.users)


def ndcg_at(ranks: np.ndarray, k: int) -> np.ndarray:
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def per_user_ndcg(runs: Sequence[Mapping], k: int = 10, key: str = "test_ranks") -> dict[str, float]:
    """Each user's NDCG@k averaged over runs (seeds), from results' ``key`` (``{"users", "ranks"}``:
    ``test_ranks``, or ``test_seen_removed_ranks`` for the ranks with seen items removed)."""
    totals: dict[str, list[float]] = {}
    for results in runs:
        users, ranks = results[key]["users"], results[key]["ranks"]
        for user, value in zip(users, ndcg_at(np.array(ranks), k)):
            totals.setdefault(user, []).append(value)
    return {user: float(np.mean(values)) for user, values in totals.items()}


def paired_comparison(
    a: Mapping[str, float], b: Mapping[str, float], resamples: int = 10_000, seed: int = 0
) -> PairedComparison:
    """Compare per-user values ``a`` and ``b`` on the users they share."""
    users = sorted(set(a) & set(b))
    if not users:
        raise ValueError("the two runs share no test users")
    differences = np.array([a[u] - b[u] for u in users])
    rng = np.random.default_rng(seed)
    observed = differences.mean()
    boot, extreme = [], 0
    for start in range(0, resamples, 500):  # in blocks: (500, users) draws at a time
        size = (min(500, resamples - start), len(users))
        boot.append(differences[rng.integers(0, len(users), size=size)].mean(axis=1))
        flipped = np.abs((rng.choice([-1.0, 1.0], size=size) * differences).mean(axis=1))
        extreme += np.count_nonzero(flipped >= abs(observed) - 1e-15)
    boot = np.concatenate(boot)
    p_value = (1 + extreme) / (resamples + 1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return PairedComparison(float(observed), float(low), float(high), float(p_value), len(users))
