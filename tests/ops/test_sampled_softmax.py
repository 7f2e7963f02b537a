"""Sampled softmax with the log-Q correction (tim4rec.ops.sampled_softmax)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tim4rec.ops.sampled_softmax import sampled_softmax_loss

torch.set_num_threads(1)


def problem(seed: int = 0, rows: int = 12, n_ids: int = 41, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, d, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(n_ids, d, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n_ids, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(1, n_ids, (rows,), generator=gen)
    return hidden, weight, bias, targets


def test_every_id_once_as_negatives_is_the_full_cross_entropy_values_and_gradients():
    hidden, weight, bias, targets = problem()
    every = torch.arange(weight.shape[0])  # each id drawn exactly once: K Q = 1, log = 0
    sampled = sampled_softmax_loss(hidden, weight, bias, targets, every, torch.zeros(len(every), dtype=torch.float64))
    full = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")
    torch.testing.assert_close(sampled, full, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(sampled, (hidden, weight, bias))
    for got, want in zip(grads, torch.autograd.grad(full, (hidden, weight, bias))):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_accidental_hits_are_left_out():
    hidden, weight, bias, targets = problem(rows=1)
    target = int(targets[0])
    negatives = torch.tensor([target, 3 if target != 3 else 4, target])
    log_expected = torch.zeros(3, dtype=torch.float64)
    loss = sampled_softmax_loss(hidden, weight, bias, targets, negatives, log_expected)
    s = (hidden @ weight.T + bias)[0]
    other = int(negatives[1])
    expected = -s[target] + torch.logsumexp(torch.stack([s[target], s[other]]), 0)
    torch.testing.assert_close(loss, expected)


def test_with_the_correction_many_popularity_draws_approach_the_full_loss():
    """E[sum_i exp(s_k_i) / (K Q(k_i))] = sum_k exp(s_k): with K large the corrected loss tends to the
    full loss; without the correction it is off by about log K and biased towards popular items."""
    hidden, weight, bias, targets = problem(seed=1, n_ids=30)
    with torch.no_grad():
        q = torch.linspace(1, 20, 29, dtype=torch.float64) ** 2  # skewed popularity over ids 1..29
        q = torch.cat([torch.zeros(1, dtype=torch.float64), q / q.sum()])  # id 0 (padding) never drawn
        # id 0 is a class of the full loss but never a negative: compare with the full loss over ids 1..29
        full = F.cross_entropy((hidden @ weight.T + bias)[:, 1:], targets - 1, reduction="sum")
        k = 200_000
        negatives = torch.multinomial(q, k, replacement=True, generator=torch.Generator().manual_seed(2))
        corrected = sampled_softmax_loss(hidden, weight, bias, targets, negatives, torch.log(k * q[negatives]))
        uncorrected = sampled_softmax_loss(
            hidden, weight, bias, targets, negatives, torch.zeros(k, dtype=torch.float64)
        )
    rows = len(targets)
    assert abs(float(corrected - full)) / rows < 0.01
    assert abs(float(uncorrected - full)) / rows > math.log(k) / 2
