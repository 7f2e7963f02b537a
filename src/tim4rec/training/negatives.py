"""Negatives for the sampled softmax (:mod:`tim4rec.ops.sampled_softmax`): K item ids per forward pass,
shared by every row of it, drawn with replacement from Q, with ``log(K Q(k))`` for the log-Q correction.

Q is ``uniform`` over the item ids 1..V (never the padding id 0) or ``popularity``: proportional to
how often each item is a training target (items never a training target are never drawn). Draws use
torch's global generator, which the run seeds and its checkpoints save.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tim4rec.errors import ConfigError

DISTRIBUTIONS = ("uniform", "popularity")


class NegativeSampler:
    """``draw()`` -> (negatives (K,) int64, log_expected (K,) float32)."""

    def __init__(self, n_negatives: int, n_items: int, distribution: str, train_counts: np.ndarray | None = None):
        if distribution not in DISTRIBUTIONS:
            expected = ", ".join(DISTRIBUTIONS)
            raise ConfigError(f"negative_distribution: expected one of {expected}, got {distribution!r}")
        self.n_negatives, self.n_items, self.distribution = int(n_negatives), int(n_items), distribution
        self.cdf: torch.Tensor | None = None
        if distribution == "popularity":
            counts = np.asarray(train_counts, dtype=np.float64)[1:]  # (V,) items 1..V
            if counts.sum() <= 0:
                raise ConfigError("negative_distribution popularity: the split has no training targets to count")
            q = counts / counts.sum()
            self.log_q = torch.from_numpy(np.log(np.where(q > 0, q, 1.0))).float()  # (V,); 0-count items never drawn
            self.cdf = torch.from_numpy(np.cumsum(q)).double()  # (V,)

    def draw(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        k, log_k = self.n_negatives, math.log(self.n_negatives)
        if self.cdf is None:  # uniform: Q = 1 / V
            negatives = torch.randint(1, self.n_items + 1, (k,))
            log_expected = torch.full((k,), log_k - math.log(self.n_items))
        else:  # popularity: inverse-CDF draws, item i + 1 where the uniform falls in its slot
            slots = torch.searchsorted(self.cdf, torch.rand(k, dtype=torch.float64) * self.cdf[-1], right=True)
            slots = slots.clamp(max=self.n_items - 1)
            negatives = slots + 1
            log_expected = log_k + self.log_q[slots]
        return negatives.to(device), log_expected.float().to(device)
