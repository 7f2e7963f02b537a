"""Full-ranking metrics from a score matrix.

The rank of a target is ``1 + #items scoring higher + #other items scoring equal``: ties count
against the model, so a model that scores every item alike gets no credit. For a cut-off k:

- ``hit@k``  = 1 if rank <= k,
- ``ndcg@k`` = 1 / log2(rank + 1) if rank <= k (one relevant item, so IDCG = 1),
- ``mrr@k``  = 1 / rank if rank <= k,

each averaged over rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

METRIC_NAMES = ("hit", "ndcg", "mrr")


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ranks (U,) long of ``targets`` (U,) among the columns of ``scores`` (U, I).

    A NaN target score gets the worst rank, I; NaN scores of other items are ignored.
    """
    if scores.dim() != 2 or targets.dim() != 1 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected scores (U, I) and targets (U,), got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    target_scores = scores.gather(1, targets[:, None])  # (U, 1)
    higher = (scores > target_scores).sum(dim=1)
    equal = (scores == target_scores).sum(dim=1) - 1  # other items tied with the target
    ranks = 1 + higher + equal
    return torch.where(torch.isnan(target_scores[:, 0]), torch.full_like(ranks, scores.shape[1]), ranks)


def metrics_from_ranks(
    ranks: torch.Tensor, ks: Sequence[int] = (10, 20, 50), names: Sequence[str] = METRIC_NAMES
) -> dict[str, float]:
    """Mean hit/ndcg/mrr at each k from ranks (U,)."""
    ranks = ranks.to(torch.float64)
    result: dict[str, float] = {}
    for name in names:
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; expected one of {METRIC_NAMES}")
        for k in ks:
            inside = ranks <= k
            if name == "hit":
                values = inside.to(torch.float64)
            elif name == "ndcg":
                values = torch.where(inside, 1.0 / torch.log2(ranks + 1.0), 0.0)
            else:
                values = torch.where(inside, 1.0 / ranks, 0.0)
            result[f"{name}@{k}"] = float(values.mean()) if len(values) else float("nan")
    return result


def full_ranking_metrics(
    scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (10, 20, 50)
) -> dict[str, float]:
    """HR, NDCG and MRR at each k for every row of ``scores`` (U, I) float, targets (U,) long.

    Every column is ranked: drop the padding column before calling. Keys look like ``"hit@10"``,
    ``"ndcg@10"``, ``"mrr@10"``.
    """
    return metrics_from_ranks(target_ranks(scores, targets), ks)
