"""Blocked scoring equals the whole (users x items) matrix: ranks with ties, stable top-k."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tim4rec.evaluation.metrics import target_ranks
from tim4rec.evaluation.scoring import blocked_target_ranks, blocked_topk, stable_topk

torch.set_num_threads(1)


def tied_problem(seed: int, users: int = 6, n_items: int = 23, d: int = 3, values: int = 3):
    """Small integer hidden states and weights: many exact ties among the scores."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-values, values + 1, (users, d), generator=gen).float()
    weight = torch.randint(-values, values + 1, (n_items + 1, d), generator=gen).float()
    bias = torch.randint(-1, 2, (n_items + 1,), generator=gen).float()
    targets = torch.randint(1, n_items + 1, (users,), generator=gen)
    return hidden, weight, bias, targets


def whole_matrix_ranks(hidden, weight, bias, targets, masked=None):
    scores = hidden @ weight.T + (0 if bias is None else bias)
    if masked is not None:
        scores[masked] = float("-inf")
    return target_ranks(scores[:, 1:], targets - 1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 2, 5, 7, 23, 24, 100]))
def test_blocked_ranks_equal_whole_matrix_ranks_ties_included(seed: int, block: int):
    hidden, weight, bias, targets = tied_problem(seed)
    expected = whole_matrix_ranks(hidden, weight, bias, targets)
    assert torch.equal(blocked_target_ranks(hidden, weight, bias, targets, block=block), expected)
    gen = torch.Generator().manual_seed(seed + 1)
    rows, ids = torch.randint(0, 6, (10,), generator=gen), torch.randint(1, 24, (10,), generator=gen)
    keep = ids != targets[rows]  # the target itself is never masked
    masked = (rows[keep], ids[keep])
    expected = whole_matrix_ranks(hidden, weight, bias, targets, masked)
    assert torch.equal(blocked_target_ranks(hidden, weight, bias, targets, block=block, masked=masked), expected)


def test_blocked_ranks_of_real_valued_scores_and_a_nan_target():
    gen = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(9, 16, generator=gen), torch.randn(1001, 16, generator=gen)
    targets = torch.randint(1, 1001, (9,), generator=gen)
    expected = whole_matrix_ranks(hidden, weight, None, targets)
    for block in (64, 1000, 1001):
        assert torch.equal(blocked_target_ranks(hidden, weight, None, targets, block=block), expected)
    weight[targets[0]] = float("nan")  # the first user's target scores NaN: the worst rank; others ignore it
    ranks = blocked_target_ranks(hidden, weight, None, targets, block=64)
    assert ranks[0] == 1000 and torch.equal(ranks, whole_matrix_ranks(hidden, weight, None, targets))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 30), n=st.integers(1, 25))
def test_stable_topk_is_the_head_of_a_stable_descending_sort(seed: int, k: int, n: int):
    scores = torch.randint(0, 4, (5, n), generator=torch.Generator().manual_seed(seed)).float()
    values, columns = stable_topk(scores, k)
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    assert torch.equal(columns, order.indices[:, :k]) and torch.equal(values, order.values[:, :k])


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12), levels=st.sampled_from([3, 40, 10_000]), nan=st.booleans())
def test_stable_topk_with_and_without_ties_at_the_kth_value(seed: int, k: int, levels: int, nan: bool):
    """Few levels: ties straddle the k-th place (the cumulative path); many: ties inside the k or none (the
    topk path); NaN anywhere counts as lowest. Either way the head of a stable descending sort."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (6, 30), generator=gen).float()
    if nan:
        scores[torch.rand(scores.shape, generator=gen) < 0.2] = float("nan")
    values, columns = stable_topk(scores, k)
    order = torch.sort(scores.nan_to_num(float("-inf")), dim=1, descending=True, stable=True)
    assert torch.equal(columns, order.indices[:, :k]) and torch.equal(values, order.values[:, :k])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), block=st.sampled_from([1, 3, 8, 24, 50]), k=st.integers(1, 26))
def test_blocked_topk_equals_sorting_the_whole_matrix(seed: int, block: int, k: int):
    hidden, weight, bias, _ = tied_problem(seed)
    rows, ids = torch.tensor([0, 0, 3]), torch.tensor([5, 9, 1])
    scores = hidden @ weight.T + bias
    scores[:, 0] = float("-inf")  # the padding id
    scores[rows, ids] = float("-inf")
    order = torch.sort(scores, dim=1, descending=True, stable=True)
    values, found = blocked_topk(hidden, weight, bias, k, block=block, masked=(rows, ids))
    kk = min(k, 24)
    assert torch.equal(found, order.indices[:, :kk]) and torch.equal(values, order.values[:, :kk])


def test_a_million_item_catalogue_scores_a_batch_in_blocks():
    """256 users x 10^6 items: the whole matrix would be 1 GiB; blocks of 65,536 items hold 64 MiB."""
    gen = torch.Generator().manual_seed(0)
    n_items, d = 1_000_000, 32
    weight = torch.randn(n_items + 1, d, generator=gen)
    hidden = torch.randn(256, d, generator=gen)
    targets = torch.randint(1, n_items + 1, (256,), generator=gen)
    ranks = blocked_target_ranks(hidden, weight, None, targets)
    values, ids = blocked_topk(hidden[:4], weight, None, 10)
    assert ranks.min() >= 1 and ranks.max() <= n_items and ids.min() >= 1
    # spot checks against exact scores of the first user
    exact = hidden[0] @ weight[1:].T
    assert torch.equal(ids[0], torch.sort(exact, descending=True, stable=True).indices[:10] + 1)
    assert ranks[0] == 1 + int((exact > exact[targets[0] - 1]).sum())


@pytest.mark.parametrize("k", [1, 5])
def test_recommendations_skip_padding_and_masked_ids(k: int):
    weight = torch.tensor([[9.0], [1.0], [3.0], [3.0], [2.0]])  # id 0 (padding) would score highest
    values, ids = blocked_topk(
        torch.ones(1, 1), weight, None, k, block=2, masked=(torch.tensor([0]), torch.tensor([2]))
    )
    assert ids[0].tolist()[: min(k, 3)] == [3, 4, 1][: min(k, 3)]
