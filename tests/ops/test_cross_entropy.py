"""The fused output-layer cross-entropy equals F.cross_entropy on the materialised logits."""

import pytest
import torch
import torch.nn.functional as F

from tim4rec.ops import cross_entropy as module
from tim4rec.ops.cross_entropy import linear_cross_entropy


def inputs(T=37, V=53, d=8, bias=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(T, d, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, d, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=dtype, requires_grad=True) if bias else None
    targets = torch.randint(0, V, (T,), generator=g)
    targets[:5] = 3  # repeated targets: the weight gradient must add them up
    return hidden, weight, b, targets


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows_per_block", [1, 7, 1000])
def test_value_and_gradients_equal_the_plain_loss(bias, rows_per_block, monkeypatch):
    hidden, weight, b, targets = inputs(bias=bias)
    monkeypatch.setattr(module, "_BLOCK_ELEMS", rows_per_block * weight.shape[0])
    fused = linear_cross_entropy(hidden, weight, targets, b)
    grads = torch.autograd.grad(2.5 * fused, [t for t in (hidden, weight, b) if t is not None])
    plain = F.cross_entropy(F.linear(hidden, weight, b), targets, reduction="sum")
    expected = torch.autograd.grad(2.5 * plain, [t for t in (hidden, weight, b) if t is not None])
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    hidden, weight, b, targets = inputs(T=6, V=5, d=3)
    assert torch.autograd.gradcheck(lambda h, w, bb: linear_cross_entropy(h, w, targets, bb), (hidden, weight, b))


def test_float32_large_logits_stay_finite():
    hidden, weight, _, targets = inputs(T=64, V=500, d=16, bias=False, dtype=torch.float32)
    with torch.no_grad():
        hidden.mul_(30)  # logits in the thousands: exp would overflow without the max subtracted
    fused = linear_cross_entropy(hidden, weight, targets)
    plain = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    assert torch.isfinite(fused)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-3)


def test_empty_and_bad_shapes():
    hidden, weight, _, targets = inputs(T=0, bias=False)
    assert float(linear_cross_entropy(hidden, weight, targets).detach()) == 0.0
    with pytest.raises(ValueError, match="expected hidden"):
        linear_cross_entropy(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("items", [400, 403])  # 403: E's item axis padded with zero items on a CPU
@pytest.mark.parametrize("bias", [False, True])
def test_bfloat16_products_stay_close_to_float32(bias, items):
    """bfloat16 products (8 mantissa bits): the loss within 1e-3 relative, the gradients within about 1%
    of their scale; the statistics and the result stay float32."""
    hidden, weight, b, targets = inputs(T=300, V=items, d=16, bias=bias, dtype=torch.float32)
    leaves = [t for t in (hidden, weight, b) if t is not None]
    exact = linear_cross_entropy(hidden, weight, targets, b)
    fast = linear_cross_entropy(hidden, weight, targets, b, compute_dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=1e-3, atol=0)
    for got, want in zip(torch.autograd.grad(fast, leaves), torch.autograd.grad(exact, leaves)):
        assert got.dtype == torch.float32
        assert float((got - want).abs().max()) <= 0.02 * float(want.abs().max())
