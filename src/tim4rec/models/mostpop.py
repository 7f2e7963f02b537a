"""MostPop: every item scored by how often it is a training target; the floor of any comparison.

The history is ignored: every user gets the same ranking (ties broken against the model by the
evaluator, as always). The counts are taken from the training targets of the split
(:meth:`fit_data`, which the experiment calls before training), so validation and test events
never leak into them. There is nothing to learn: the model has no parameters and the trainer
takes no optimiser steps; one epoch validates it.
"""

from __future__ import annotations

import numpy as np
import torch

from tim4rec.data.batches import PREFIX, SequenceData
from tim4rec.models.base import SequentialRecommender
from tim4rec.models.hyperparameters import Hyperparameters


class MostPop(SequentialRecommender):
    name = "mostpop"
    regime = PREFIX
    causal = False
    fixed_length = False  # any history: it is not read

    def __init__(self, n_items: int, max_seq_length: int, hp: Hyperparameters):
        super().__init__(n_items, max_seq_length)
        self.register_buffer("counts", torch.zeros(n_items + 1))

    def fit_data(self, data: SequenceData) -> None:
        """Count how often each item is a training target of ``data``'s split."""
        self.counts.copy_(torch.from_numpy(data.train_target_counts().astype(np.float32)))

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """A hidden state of 1 at every position (B, L, 1): the score of an item is its count."""
        self.check_history(item_seq, item_seq_len, timestamps)
        return self.counts.new_ones(*item_seq.shape, 1)

    def output_layer(self) -> tuple[torch.Tensor, None]:
        return self.counts[:, None], None  # (n_items + 1, 1)
