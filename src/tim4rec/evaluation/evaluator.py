"""Evaluate a model on validation or test samples by full ranking over all items."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tim4rec.data.sequences import SampleSet, SequenceData
from tim4rec.evaluation.metrics import metrics_from_ranks, target_ranks


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: SequenceData,
    samples: SampleSet,
    *,
    batch_size: int = 1024,
    ks: Sequence[int] = (10, 20, 50),
    metric_names: Sequence[str] = ("hit", "ndcg", "mrr"),
    mask_history: bool = False,
) -> dict[str, float]:
    """Rank each sample's target among all items 1..n_items with the model's scores.

    The padding column (item 0) is dropped before ranking; with ``mask_history`` every item the
    user met before the target (other than the target itself) scores -inf.
    """
    was_training = model.training
    model.eval()
    ranks = []
    try:
        for begin in range(0, len(samples), batch_size):
            rows = torch.arange(begin, min(begin + batch_size, len(samples)))
            batch = data.batch(samples, rows)
            scores = model.full_sort_predict(batch["item_seq"], batch["item_seq_len"], batch["timestamps"]).float()
            if mask_history:
                row_index, item_index = data.history_mask_indices(samples, rows)
                scores[row_index, item_index] = float("-inf")
            ranks.append(target_ranks(scores[:, 1:], batch["target"] - 1))
    finally:
        model.train(was_training)
    return metrics_from_ranks(torch.cat(ranks), ks, metric_names)
