"""Cross-entropy over all items fused with the output layer: ``sum_t CE(h_t W^T + b, y_t)``.

The plain way (``F.cross_entropy(h @ W.T + b, y)``) materialises the (T, V) logits and passes
over them five times (log-softmax forward, the loss, a zero fill, the log-softmax backward, the
two gradient products); with V in the thousands this costs more than the model that computes h.
Here the forward computes the logits in one product, then, in row blocks small enough to stay in
cache, their row maxima m_t, the exponentials ``E = exp(logits - m)`` (written over the logits) and
the row sums ``z_t = sum_v E_tv``; the loss is ``m_t + log z_t - logit_{t, y_t}``. Only E and z are
kept. With P = E / z (the softmax, never formed) and G = P - onehot(y), the backward is two
products whose (T, d) or (V, d) operands carry the 1 / z scaling, so no pass over (T, V) is needed:

    dL/dh = g ((E W) / z - W[y]),      dL/dW = g (E^T (h / z) - sum_t e_{y_t} h_t^T),
    dL/db = g (E^T (1 / z) - counts(y))

(g the incoming gradient of the summed loss).

``compute_dtype``: the dtype of the two big products and of E (None: the inputs' dtype). With
``torch.bfloat16`` on a CPU with AMX or AVX-512 BF16 the products run several times faster and E
takes half the memory; the maxima, sums, logarithms and the loss are float32 either way, and the
gradients come back in the inputs' dtype (float64 inputs: float64 throughout). Numerics: the row
maximum is subtracted before ``exp``, as ``F.cross_entropy`` does, so every E lies in [0, 1] and z >= 1.

Layout on a CPU: the item axis is padded with zero items to a multiple of ``_COLUMN_ALIGN`` (E is
(T, V') with zero columns past V, which add nothing to z or to any gradient), and the forward product
takes W^T contiguous. With V = 3417 (ML-1M) a bfloat16 ``h @ W.T`` took 10.4 ms against 1.6 ms either
way, and the backward products over an E whose rows have an odd length 2.9 and 4.8 ms against 1.1 and
2.2 ms (T 2048, d 64, 1 thread); float32 gains less (13.3 -> 9.6 ms for the forward product). The
weight gradient is formed as ``(scaled^T E)^T``, E read in the layout it is stored in: the same numbers
(bit for bit here), the whole loss forward and backward 44.5 -> 39.0 ms in float32, 22.1 -> 21.7 in bfloat16.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_cross_entropy"]

_BLOCK_ELEMS = 1 << 18  # float32 logits of one row block (1 MiB): stays in cache
_ROW_BUCKET = 256  # low-precision products on a CPU run at a multiple of this many rows (see _padded_rows)
_COLUMN_ALIGN = 16  # on a CPU the item axis of E is padded to a multiple of this (see the module docstring)


def _padded_rows(rows: int, low_precision_cpu: bool) -> int:
    """The row count the products run at: ``rows``, or for low precision on a CPU the next multiple of
    ``_ROW_BUCKET``. oneDNN builds (JIT-compiles) a bfloat16 kernel for every new shape, which took
    longer than the product itself when the number of targets changed from step to step."""
    return -(-rows // _ROW_BUCKET) * _ROW_BUCKET if low_precision_cpu else rows


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """``t`` (T, ...) with zero rows appended up to ``rows``."""
    return t if t.shape[0] == rows else torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])])


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, compute_dtype: torch.dtype
    ) -> Tensor:
        T, V = hidden.shape[0], weight.shape[0]
        cpu = hidden.device.type == "cpu"
        padded = _padded_rows(T, compute_dtype != hidden.dtype and cpu)
        items = -(-V // _COLUMN_ALIGN) * _COLUMN_ALIGN if cpu else V  # V': E's row length
        h = _pad_rows(hidden.to(compute_dtype), padded)  # (T', d)
        w = _pad_rows(weight.to(compute_dtype), items)  # (V', d), zero rows past V
        w_t = w.t().contiguous() if cpu else w.t()  # (d, V')
        if bias is None:
            exps = h @ w_t  # (T', V') logits
        else:
            exps = torch.addmm(_pad_rows(bias.to(compute_dtype), items), h, w_t)
        exps[T:] = 0  # padding rows: no loss, no gradient
        stats = torch.promote_types(hidden.dtype, torch.float32)  # float32, or float64 for float64 inputs
        picked = exps[:T].gather(1, targets[:, None]).squeeze(1).to(stats)  # (T,) logit of each target
        sums = torch.empty(T, dtype=stats, device=hidden.device)  # z
        tops = torch.empty(T, dtype=stats, device=hidden.device)  # m
        rows = max(1, _BLOCK_ELEMS // max(1, V))
        for start in range(0, T, rows):
            part = slice(start, min(start + rows, T))
            block = exps[part, :V].to(stats)  # the block itself, or a float32 copy of it in cache
            top = block.amax(dim=1, keepdim=True)
            block.sub_(top).exp_()
            sums[part], tops[part] = block.sum(dim=1), top.squeeze(1)
            if block.data_ptr() != exps[part].data_ptr():  # a low-precision E: write the block back
                exps[part, :V] = block
        exps[:, V:] = 0  # padding items: no probability
        total = (tops + sums.log() - picked).sum()
        ctx.save_for_backward(hidden, weight, w, targets, exps, sums)
        ctx.has_bias = bias is not None
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        hidden, weight, w, targets, exps, sums = ctx.saved_tensors
        (T, V), padded = (hidden.shape[0], weight.shape[0]), exps.shape[0]
        inverse = sums.reciprocal()[:, None]  # (T, 1) 1 / z
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = ((exps @ w)[:T].to(hidden.dtype) * inverse - weight[targets]) * grad  # (T, d)
        if ctx.needs_input_grad[1]:
            scaled = _pad_rows((hidden * inverse).to(exps.dtype), padded)  # (T', d)
            # (d, T') @ (T', V') with E as stored, then transposed: E^T @ scaled took 14.0 ms in float32
            # and 3.4 in bfloat16 against 7.7 and 2.2 this way (T' 2048, V' 3424, d 64, 1 CPU thread)
            grad_weight = (scaled.t() @ exps)[:, :V].t().to(weight.dtype).contiguous()  # (V, d)
            grad_weight.index_add_(0, targets, hidden, alpha=-1)
            grad_weight *= grad
        if ctx.has_bias and ctx.needs_input_grad[2]:
            counts = torch.bincount(targets, minlength=V).to(weight.dtype)
            column = _pad_rows(inverse.to(exps.dtype), padded)  # (T', 1)
            grad_bias = ((column.t() @ exps).squeeze(0)[:V].to(weight.dtype) - counts) * grad
        return grad_hidden, grad_weight, grad_bias, None, None


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """The summed cross-entropy of ``hidden @ weight.T + bias`` (rows) against ``targets``.

    Args:
        hidden: (T, d) states.   weight: (V, d) output (item) table.   targets: (T,) long in [0, V).
        bias: (V,) or None.   compute_dtype: the products' dtype (None: hidden's; see the module docstring).
    Returns:
        A scalar (float32; float64 for float64 inputs):
        ``F.cross_entropy(hidden @ weight.T + bias, targets, reduction="sum")``.
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
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, compute_dtype or hidden.dtype)
