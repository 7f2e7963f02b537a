"""Parallel scan of a diagonal linear recurrence, in pure PyTorch.

    h_t = lambda_t * h_{t-1} + x_t,      h_{-1} = initial (default 0),      t = 0 .. L-1

element-wise over channels, for real or complex tensors (the LRU of LRURec uses complex ones).

Each step t is the affine map ``h -> lambda_t h + x_t``; maps compose associatively,
``(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)``, so all prefixes can be built in
``ceil(log2 L)`` rounds (Hillis & Steele / Kogge & Stone): in the round with shift s every
position t >= s absorbs the partial result at t - s,

    x_t <- x_t + a_t * x_{t-s},      a_t <- a_t * a_{t-s},

after which position t holds the composition of steps max(0, t - 2s + 1) .. t. With h_{-1} = 0
the accumulated ``x_t`` is h_t. When lambda does not depend on t (the LRU case) every ``a_t``
used in the round with shift s equals ``lambda^s``, so only one power per round is kept
(computed by repeated squaring) and no (B, L, ...) multiplier tensor is built.

Work is O(L log L) element-wise multiply-adds per channel, depth O(log L); every round is one
out-of-place tensor expression, so autograd works through it (memory: one (B, L, ...) tensor
per round). The powers ``lambda^s`` only shrink for ``|lambda| <= 1``, so nothing overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lru_scan", "lru_scan_reference"]


def lru_scan(lambdas: Tensor, inputs: Tensor, initial: Tensor | None = None) -> Tensor:
    """All states h (B, L, *C) of ``h_t = lambda_t * h_{t-1} + x_t`` along dim 1.

    Args:
        lambdas: time-invariant multipliers broadcastable to ``C`` (e.g. (N,) for inputs
            (B, L, N)), or time-varying ones with the same number of dimensions as ``inputs``
            and broadcastable to it, e.g. (B, L, N) or (1, L, N).
        inputs: x (B, L, *C), real or complex.
        initial: optional h_{-1}, broadcastable to (B, *C).

    Returns:
        h (B, L, *C) in the promoted dtype of ``lambdas`` and ``inputs``.
    """
    if inputs.dim() < 2:
        raise ValueError(f"inputs must be (B, L, ...), got shape {tuple(inputs.shape)}")
    dtype = torch.promote_types(lambdas.dtype, inputs.dtype)
    lambdas, h = lambdas.to(dtype), inputs.to(dtype)
    time_varying = lambdas.dim() == inputs.dim()
    if initial is not None:  # fold h_{-1} into the first input: x_0 <- x_0 + lambda_0 h_{-1}
        first_lambda = lambdas[:, 0] if time_varying else lambdas
        h = torch.cat([(h[:, 0] + first_lambda * initial.to(dtype)).unsqueeze(1), h[:, 1:]], dim=1)
    length = h.shape[1]
    if time_varying:
        a = lambdas.expand_as(h)
        shift = 1
        while shift < length:
            h = torch.cat([h[:, :shift], h[:, shift:] + a[:, shift:] * h[:, :-shift]], dim=1)
            a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
            shift *= 2
        return h
    power = lambdas  # lambda^shift
    shift = 1
    while shift < length:
        h = torch.cat([h[:, :shift], h[:, shift:] + power * h[:, :-shift]], dim=1)
        power = power * power
        shift *= 2
    return h


def lru_scan_reference(lambdas: Tensor, inputs: Tensor, initial: Tensor | None = None) -> Tensor:
    """The same recurrence as :func:`lru_scan` by a plain loop over time (for tests and checks)."""
    dtype = torch.promote_types(lambdas.dtype, inputs.dtype)
    time_varying = lambdas.dim() == inputs.dim()
    state = (
        torch.zeros_like(inputs[:, 0], dtype=dtype) if initial is None else initial.to(dtype).expand_as(inputs[:, 0])
    )
    states = []
    for t in range(inputs.shape[1]):
        multiplier = lambdas[:, t] if time_varying else lambdas
        state = multiplier * state + inputs[:, t]
        states.append(state)
    return torch.stack(states, dim=1)
