"""Cross-entropy over all items fused with the output layer: ``sum_t CE(h_t W^T + b, y_t)``.

The plain way (``F.cross_entropy(h @ W.T + b, y)``) materialises the (T, V) logits and passes
over them five times (log-softmax forward, the loss, a zero fill, the log-softmax backward, the
two gradient products); with V in the thousands this costs more than the model that computes h.
Here, in row blocks small enough to stay in cache, the forward computes the logits, their
softmax and the loss, and keeps only the (T, V) probabilities P. The backward needs no further
pass over them beyond the two matrix products, because with G = P - onehot(y):

    dL/dh = g (P W - W[y]),      dL/dW = g (P^T h - sum_t e_{y_t} h_t^T),      dL/db = g (sum_t P_t - counts(y))

(g the incoming gradient of the summed loss). Numerics: logsumexp with the row maximum
subtracted, as ``F.cross_entropy`` does; sums in the input dtype (float32 in training).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_cross_entropy"]

_BLOCK_ELEMS = 1 << 18  # logits of one row block (1 MiB of float32): stays in cache


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Tensor:
        T, V = hidden.shape[0], weight.shape[0]
        rows = max(1, _BLOCK_ELEMS // max(1, V))
        probabilities = hidden.new_empty(T, V)
        total = hidden.new_zeros(())
        for start in range(0, T, rows):
            part = slice(start, min(start + rows, T))
            logits = probabilities[part]  # (r, V) written in place: logits, then probabilities
            if bias is None:
                torch.mm(hidden[part], weight.t(), out=logits)
            else:
                torch.addmm(bias, hidden[part], weight.t(), out=logits)
            picked = logits.gather(1, targets[part, None]).squeeze(1)  # (r,) logit of the target
            top = logits.amax(dim=1, keepdim=True)
            logits.sub_(top).exp_()
            norm = logits.sum(dim=1, keepdim=True)
            logits.div_(norm)
            total += (top.squeeze(1) + norm.squeeze(1).log() - picked).sum()  # logsumexp - target logit
        ctx.save_for_backward(hidden, weight, targets, probabilities)
        ctx.has_bias = bias is not None
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, targets, probabilities = ctx.saved_tensors
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (probabilities @ weight - weight[targets]) * grad
        if ctx.needs_input_grad[1]:
            grad_weight = probabilities.t() @ hidden
            grad_weight.index_add_(0, targets, hidden, alpha=-1)
            grad_weight *= grad
        if ctx.has_bias and ctx.needs_input_grad[2]:
            counts = torch.bincount(targets, minlength=weight.shape[0]).to(probabilities.dtype)
            grad_bias = (probabilities.sum(0) - counts) * grad
        return grad_hidden, grad_weight, grad_bias, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> Tensor:
    """The summed cross-entropy of ``hidden @ weight.T + bias`` (rows) against ``targets``.

    Args:
        hidden: (T, d) states.   weight: (V, d) output (item) table.   targets: (T,) long in [0, V).
        bias: (V,) or None.
    Returns:
        A scalar: ``F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")``.
    """
    if (
        hidden.dim() != 2
        or weight.dim() != 2
        or hidden.shape[1] != weight.shape[1]
        or targets.shape != hidden.shape[:1]
    ):
        raise ValueError(
            f"expected hidden (T, d), weight (V, d), targets (T,); got {tuple(hidden.shape)}, "
            f"{tuple(weight.shape)}, {tuple(targets.shape)}"
        )
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
