"""Full ranking over the catalogue one block of items at a time.

Scores are ``hidden @ weight.T + bias`` over the item ids 0..V (0 the padding id, never ranked nor
recommended). With V = 10^6 items, the (users x items) matrix of a 1,024-user evaluation batch
would take 4 GB; here no more than (users x ``block``) scores exist at once, and the results equal
those of the whole matrix:

- :func:`blocked_target_ranks`: the rank of each row's target among the items 1..V, ties counted
  against the model (rank = 1 + #higher + #tied others), as :func:`~tim4rec.evaluation.metrics.target_ranks`
  computes on the whole matrix. The target's score is read from the very block product that is
  compared with the other items (a product of other shapes may round differently and break exact
  ties), so a catalogue of several blocks costs two passes over the blocks.
- :func:`blocked_topk`: the k best items of each row in the order of a stable descending sort
  (ties: the lower id first), merged block by block.

A catalogue that fits in one block (``V + 1 <= block``) is scored in one product, exactly as
before blocking.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

ITEM_BLOCK = 1 << 16  # items per block: 1,024 users x 65,536 items of float32 = 256 MiB


def score_blocks(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, block: int = ITEM_BLOCK
) -> Iterator[tuple[int, Tensor]]:
    """(first id, scores (B, n) of ids first..first + n - 1) for consecutive blocks of the ids 0..V."""
    for start in range(0, weight.shape[0], block):
        end = min(start + block, weight.shape[0])
        yield start, F.linear(hidden, weight[start:end], None if bias is None else bias[start:end]).float()


def _mask(scores: Tensor, start: int, masked: tuple[Tensor, Tensor] | None) -> Tensor:
    """-inf at the (row, id) pairs of ``masked`` that fall in the block of ids from ``start``."""
    if masked is not None:
        rows, ids = masked
        if start == 0 and len(ids) and int(ids.max()) < scores.shape[1]:  # every id falls in this block
            scores[rows, ids] = float("-inf")
            return scores
        here = (ids >= start) & (ids < start + scores.shape[1])
        scores[rows[here], ids[here] - start] = float("-inf")
    return scores


def blocked_target_ranks(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    *,
    block: int = ITEM_BLOCK,
    masked: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Ranks (B,) of ``targets`` (B,) (ids 1..V) among the ids 1..V; ``masked``: (rows, ids) scored -inf.

    A NaN target score gets the worst rank, V; NaN scores of other items are ignored.
    """
    n_items = weight.shape[0] - 1
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    # The target's score must come from the same product (same shapes, so the same rounding) as the
    # scores it is compared with: a product of other shapes may round differently and break ties.
    blocks = None
    if n_items + 1 <= block:  # one block: one product, the target's score read from it
        blocks = [next(score_blocks(hidden, weight, bias, block))]
        target_scores = blocks[0][1][rows, targets]
    else:  # first the blocks that hold a target, read at the targets; then every block, compared
        target_scores = torch.empty(hidden.shape[0], device=hidden.device)
        for start, scores in score_blocks(hidden, weight, bias, block):
            mine = (targets >= start) & (targets < start + scores.shape[1])
            target_scores[mine] = scores[rows[mine], targets[mine] - start]
    higher = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
    tied = torch.zeros_like(higher)
    for start, scores in blocks or score_blocks(hidden, weight, bias, block):
        scores = _mask(scores, start, masked)
        if start == 0:
            scores = scores[:, 1:]  # the padding id is not an item
        higher += (scores > target_scores[:, None]).sum(1)
        tied += (scores == target_scores[:, None]).sum(1)
    ranks = 1 + higher + tied - 1  # the target is tied with itself
    return torch.where(torch.isnan(target_scores), torch.full_like(ranks, n_items), ranks)


def stable_topk(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The first k columns of a stable descending sort of each row of ``scores`` (B, n): (values, columns).

    ``torch.topk`` may break ties at the k-th value either way; here the lower columns win, as in
    ``torch.sort(descending=True, stable=True)``, without sorting whole rows. NaN counts as lowest.
    """
    k = min(k, scores.shape[1])
    if k == 0:
        return scores[:, :0], torch.zeros(scores.shape[0], 0, dtype=torch.long, device=scores.device)
    values, columns = scores.topk(k, dim=1)
    # the usual case, one check: the k values strictly decrease (no tie and no NaN among them) and nothing
    # else equals the k-th: topk's set and order are the stable sort's
    strict = (values[:, 1:] < values[:, :-1]).all(1)
    if bool((strict & ((scores == values[:, -1:]).sum(1) == 1)).all()):
        return values, columns
    nan = torch.isnan(scores)
    if not bool(nan.any()):
        kth = values[:, -1:]
        # every column tied at the k-th value is among the k: the set is the sort's; order it by value, then column
        if bool(((scores == kth).sum(1) == (values == kth).sum(1)).all()):
            columns, by_column = columns.sort(dim=1)
            values = values.gather(1, by_column)
            order = torch.sort(values, dim=1, descending=True, stable=True).indices
            return values.gather(1, order), columns.gather(1, order)
    scores = scores.masked_fill(nan, float("-inf"))
    kth = scores.topk(k, dim=1).values[:, -1:]  # (B, 1) the k-th best value
    above = scores > kth
    at = scores == kth
    # of the columns tied at the k-th value, the lowest ones fill the places left after those above it
    places = k - above.sum(1, keepdim=True)
    chosen = above | (at & (at.cumsum(1) <= places))  # exactly k per row
    columns = torch.nonzero(chosen)[:, 1].view(-1, k)  # (B, k) ascending
    values = scores.gather(1, columns)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), columns.gather(1, order)


def blocked_topk(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    k: int,
    *,
    block: int = ITEM_BLOCK,
    masked: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """The k best ids of each row among 1..V: (scores (B, k), ids (B, k)) in stable descending order.

    ``masked``: (rows, ids) pairs left out (scored -inf); left-out and padding ids may still fill
    places with -inf scores when fewer than k others exist (callers drop non-finite scores).
    """
    best_values = best_ids = None
    for start, scores in score_blocks(hidden, weight, bias, block):
        scores = _mask(scores, start, masked)
        if start == 0:
            scores[:, 0] = float("-inf")  # the padding id is never recommended
        values, columns = stable_topk(scores, k)
        ids = columns + start
        if best_values is None:
            best_values, best_ids = values, ids
            continue
        # the earlier blocks' ids are all lower: a stable sort of [best, block] keeps the lower id first among ties
        merged_values, merged_ids = torch.cat([best_values, values], 1), torch.cat([best_ids, ids], 1)
        order = torch.sort(merged_values, dim=1, descending=True, stable=True).indices[:, :k]
        best_values, best_ids = merged_values.gather(1, order), merged_ids.gather(1, order)
    return best_values, best_ids
