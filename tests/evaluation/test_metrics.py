import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tim4rec.evaluation import full_ranking_metrics, target_ranks


def test_hand_made_ranks():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # target 0 is top: rank 1
            [0.5, 0.5, 0.1, 0.0],  # target 1 tied with one other: rank 2
            [0.1, 0.2, 0.3, 0.4],  # target 0 is last: rank 4
        ]
    )
    targets = torch.tensor([0, 1, 0])
    assert target_ranks(scores, targets).tolist() == [1, 2, 4]
    metrics = full_ranking_metrics(scores, targets, ks=(1, 2))
    assert metrics["hit@1"] == 1 / 3
    assert metrics["hit@2"] == 2 / 3
    assert math.isclose(metrics["ndcg@2"], (1 + 1 / math.log2(3)) / 3)
    assert math.isclose(metrics["mrr@2"], (1 + 0.5) / 3)
    assert set(metrics) == {f"{m}@{k}" for m in ("hit", "ndcg", "mrr") for k in (1, 2)}


def test_all_equal_scores_get_no_credit():
    scores = torch.zeros(5, 100)
    metrics = full_ranking_metrics(scores, torch.arange(5), ks=(10, 20, 50))
    assert all(value == 0.0 for value in metrics.values())


def test_nan_target_gets_worst_rank():
    scores = torch.tensor([[float("nan"), 0.0, 1.0]])
    assert target_ranks(scores, torch.tensor([0])).tolist() == [3]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(2, 30), st.integers(0, 10_000))
def test_ranks_match_a_sort_with_ties_against_the_model(rows, columns, seed):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (rows, columns), generator=generator).float()  # many ties
    targets = torch.randint(0, columns, (rows,), generator=generator)
    ranks = target_ranks(scores, targets)
    for row in range(rows):
        target_score = scores[row, targets[row]]
        worst = sum(1 for c in range(columns) if scores[row, c] >= target_score)
        assert ranks[row] == worst
    metrics = full_ranking_metrics(scores, targets, ks=(1, columns))
    assert metrics[f"hit@{columns}"] == 1.0
    assert 0 <= metrics["ndcg@1"] <= metrics[f"ndcg@{columns}"] <= 1
