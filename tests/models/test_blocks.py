import pytest
import torch
from torch import nn

from tim4rec.models.blocks import Dropout, causal_conv, causal_conv_step


def _loop(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """y[:, t, c] = bias[c] + sum_k w[c, k] x[:, t - (K-1) + k, c], zeros before the first step; x (B, L, C)."""
    w, K = conv.weight[:, 0, :].double(), conv.kernel_size[0]
    x = x.double()
    y = torch.zeros_like(x) + conv.bias.double()
    for t in range(x.shape[1]):
        for k in range(K):
            s = t - (K - 1) + k
            if s >= 0:
                y[:, t] += w[:, k] * x[:, s]
    return y


def test_causal_conv_matches_loop_and_gradients():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(3, 9, 6, requires_grad=True)
    y = causal_conv(conv, x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), _loop(x, conv), atol=1e-6, rtol=1e-6)
    # gradients against the plain Conv1d on (B, C, L), padded on both sides and cut to L
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    reference = conv(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2)
    grads_ref = torch.autograd.grad(reference, (x, conv.weight, conv.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_conv_step_repeats_the_full_convolution():
    torch.manual_seed(1)
    conv = nn.Conv1d(5, 5, 4, groups=5, padding=3)
    x = torch.randn(2, 7, 5)
    window = torch.zeros(2, 5, 3)
    steps = []
    for t in range(7):
        y, window = causal_conv_step(conv, window, x[:, t])
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), causal_conv(conv, x), atol=1e-6, rtol=1e-6)


def test_dropout_keeps_each_element_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    dropout = Dropout(0.2).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.8) < 0.005  # 200,000 draws: 5 standard deviations is 0.0045
    assert torch.allclose(y[kept], torch.tensor(1.25))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.tensor(1.25))
    torch.manual_seed(0)
    assert torch.equal(Dropout(0.2).train()(torch.ones(400, 500)), y.detach())  # the seeded generator decides
    assert torch.equal(dropout.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_scales_kept_elements_exactly_as_x_times_scale_in_their_dtype(dtype):
    """p 0.1: 1 / 0.9 has no exact bfloat16 form; a kept element is x * (1 / 0.9) rounded once in x's dtype
    (not x times a rounded scale), a dropped one 0, forward and backward."""
    torch.manual_seed(1)
    x = torch.randn(64, 300).to(dtype).requires_grad_()
    y = Dropout(0.1).train()(x)
    kept = y != 0
    assert 0.85 < float(kept.float().mean()) < 0.95 and y.dtype == dtype
    assert torch.equal(y, torch.where(kept, x.detach() * (1 / 0.9), torch.zeros((), dtype=dtype)))
    grad = torch.randn(64, 300).to(dtype)
    y.backward(grad)
    assert torch.equal(x.grad, torch.where(kept, grad * (1 / 0.9), torch.zeros((), dtype=dtype)))
