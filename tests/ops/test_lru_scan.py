"""The parallel linear-recurrence scan against a float64 loop: values and gradients."""

import pytest
import torch

from tim4rec.ops.lru_scan import lru_scan, lru_scan_reference


def ring_lambdas(shape, generator, r_min=0.8, r_max=0.999):
    """Complex multipliers with |lambda| in [r_min, r_max] and any phase (the LRU's regime)."""
    radius = r_min + (r_max - r_min) * torch.rand(shape, generator=generator, dtype=torch.float64)
    phase = 2 * torch.pi * torch.rand(shape, generator=generator, dtype=torch.float64)
    return torch.polar(radius, phase)


def complex_normal(shape, generator):
    return torch.complex(
        torch.randn(shape, generator=generator, dtype=torch.float64),
        torch.randn(shape, generator=generator, dtype=torch.float64),
    )


def values_and_grads(scan, lambdas, inputs, weights, initial=None):
    """h and d(sum Re(conj(w) h))/d(lambdas, inputs[, initial]) for one scan implementation."""
    leaves = [lambdas.detach().clone().requires_grad_(), inputs.detach().clone().requires_grad_()]
    if initial is not None:
        leaves.append(initial.detach().clone().requires_grad_())
    h = scan(*leaves)
    if h.is_complex():
        loss = (torch.view_as_real(h) * torch.view_as_real(weights.to(h.dtype))).sum()
    else:
        loss = (h * weights.to(h.dtype)).sum()
    loss.backward()
    return h.detach(), [
        torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves
    ]  # None: unused (L = 1)


@pytest.mark.parametrize("length", [1, 2, 5, 16, 37, 200])
@pytest.mark.parametrize("time_varying", [False, True])
def test_float32_scan_matches_float64_loop_with_gradients(length, time_varying):
    generator = torch.Generator().manual_seed(length)
    b, n = 3, 6
    lambdas = ring_lambdas((b, length, n) if time_varying else (n,), generator)
    inputs = complex_normal((b, length, n), generator)
    weights = complex_normal((b, length, n), generator)
    h32, grads32 = values_and_grads(lru_scan, lambdas.to(torch.complex64), inputs.to(torch.complex64), weights)
    h64, grads64 = values_and_grads(lru_scan_reference, lambdas, inputs, weights)
    assert h32.dtype == torch.complex64
    torch.testing.assert_close(h32, h64.to(torch.complex64), rtol=1e-4, atol=1e-4)
    for ours, expected in zip(grads32, grads64):
        torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-4, atol=1e-4)


def test_float64_scan_is_exact_to_rounding():
    generator = torch.Generator().manual_seed(0)
    lambdas, inputs = ring_lambdas((8,), generator), complex_normal((2, 50, 8), generator)
    torch.testing.assert_close(lru_scan(lambdas, inputs), lru_scan_reference(lambdas, inputs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("time_varying", [False, True])
def test_initial_state(time_varying):
    generator = torch.Generator().manual_seed(1)
    b, length, n = 2, 13, 4
    lambdas = ring_lambdas((1, length, n) if time_varying else (n,), generator)
    inputs, initial = complex_normal((b, length, n), generator), complex_normal((b, n), generator)
    weights = complex_normal((b, length, n), generator)
    h32, grads32 = values_and_grads(
        lru_scan, lambdas.to(torch.complex64), inputs.to(torch.complex64), weights, initial.to(torch.complex64)
    )
    h64, grads64 = values_and_grads(lru_scan_reference, lambdas, inputs, weights, initial)
    torch.testing.assert_close(h32, h64.to(torch.complex64), rtol=1e-4, atol=1e-4)
    for ours, expected in zip(grads32, grads64):
        torch.testing.assert_close(ours, expected.to(ours.dtype), rtol=1e-4, atol=1e-4)
    # splitting a sequence in two and carrying the state gives the same states
    first = lru_scan(lambdas[:, :6] if time_varying else lambdas, inputs[:, :6])
    second = lru_scan(lambdas[:, 6:] if time_varying else lambdas, inputs[:, 6:], initial=first[:, -1])
    torch.testing.assert_close(torch.cat([first, second], 1), lru_scan(lambdas, inputs), rtol=1e-12, atol=1e-12)


def test_real_values_and_extra_channel_axes():
    generator = torch.Generator().manual_seed(2)
    lambdas = torch.rand(3, 5, generator=generator, dtype=torch.float64) * 2 - 1  # signs allowed, |lambda| < 1
    inputs = torch.randn(2, 21, 3, 5, generator=generator, dtype=torch.float64)
    weights = torch.randn(2, 21, 3, 5, generator=generator, dtype=torch.float64)
    h32, grads32 = values_and_grads(lru_scan, lambdas.float(), inputs.float(), weights)
    h64, grads64 = values_and_grads(lru_scan_reference, lambdas, inputs, weights)
    torch.testing.assert_close(h32, h64.float(), rtol=1e-4, atol=1e-4)
    for ours, expected in zip(grads32, grads64):
        torch.testing.assert_close(ours, expected.float(), rtol=1e-4, atol=1e-4)


def test_causal_and_rejects_bad_shapes():
    generator = torch.Generator().manual_seed(3)
    lambdas, inputs = ring_lambdas((4,), generator), complex_normal((1, 30, 4), generator)
    changed = inputs.clone()
    changed[:, 17:] = complex_normal((1, 13, 4), generator)
    torch.testing.assert_close(lru_scan(lambdas, changed)[:, :17], lru_scan(lambdas, inputs)[:, :17], rtol=0, atol=0)
    with pytest.raises(ValueError):
        lru_scan(lambdas, inputs[0, 0])
