"""Mamba-2 State Space Duality (SSD): chunked scan and one-step recurrence, in pure PyTorch.

Per batch element and head (state S is p x n, ``A <= 0`` a scalar per head):

    Delta_t = clamp(softplus(dt_t + dt_bias), *dt_limit)        (bias / softplus / clamp optional)
    S_t     = exp(Delta_t A) S_{t-1} + Delta_t x_t B_t^T
    y_t     = S_t C_t + D x_t,      then  y_t <- y_t * silu(z_t)  (when z is given)

``ssd_scan`` evaluates this with the SSD block decomposition of Dao & Gu, "Transformers are
SSMs" (2024), Sec. 6 / Listing 1: split the sequence into chunks of Q steps; the sequence mixer
``y = M x`` with ``M_ij = C_i^T B_j exp(a_{j+1} + ... + a_i) Delta_j`` (``a_t = Delta_t A``)
is computed as (1) diagonal blocks -- quadratic attention-like form inside each chunk,
(2) chunk states -- the state each chunk produces on its own, (3) state passing -- the linear
recurrence over chunks, (4) off-diagonal blocks -- the contribution of the incoming state.
Cost is O(l Q (p + n)) time and O(l Q) memory per head. Chunks are processed in blocks of
consecutive chunks whose (b, h, chunks, Q, Q) intermediates hold about ``_BLOCK_ELEMS`` numbers,
carrying the state from block to block: the big temporaries stay cache-sized and reusable by the
allocator (whole-sequence temporaries of tens of MB are fresh pages on every call), so time stays
linear in l in practice.

On CUDA with mamba-ssm installed, :func:`ssd_scan` and :func:`ssd_readout` call its Triton kernel
``mamba_chunk_scan_combined`` instead (same arguments and semantics; :mod:`tim4rec.ops.kernels`).

Beside the fast path, :func:`ssd_recurrent` (the recurrence step by step) and :func:`ssd_quadratic`
(the (l, l) matrix form) state the same function as the paper does; the tests and the kernel
benchmark use them as the oracle. :func:`ssd_chunked_reference` writes the four steps above directly
from the paper's equations, one einsum each, as a one-screen reading of the chunked form.

Numerics: all work happens in float32 (float64 for float64 ``x``), also under autocast
(:mod:`tim4rec.ops.precision`). Every exponent is a sum of
``a_t = Delta_t A <= 0`` built by cumulative sums, never a difference of cumulative sums, so no
``exp`` of a positive number and no ``inf - inf``; inside a chunk the (Q, Q) decays are masked
cumulative products of the factors ``exp(a_t)`` in [0, 1] (the same sums, one ``exp`` per step
instead of one per pair; see ``_DecayedScores``). This holds for ``A <= 0`` (Mamba uses
``A = -exp(A_log)``) and ``Delta >= 0``; the functions do not check values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tim4rec.ops.compile import compiled
from tim4rec.ops.kernels import fused_kernel
from tim4rec.ops.precision import float32_compute

__all__ = ["ssd_chunked_reference", "ssd_quadratic", "ssd_readout", "ssd_recurrent", "ssd_scan", "ssd_step"]

_NO_LIMIT = (0.0, float("inf"))
_BLOCK_ELEMS = 1 << 20  # size of the (b, h, chunks, Q, Q) intermediates of one block of chunks


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (also for float16 / bfloat16)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _step_size(
    dt: Tensor, dt_bias: Tensor | None, dt_softplus: bool, dt_limit: tuple[float, float], dtype: torch.dtype
) -> Tensor:
    """Delta = clamp(softplus(dt + dt_bias), *dt_limit); dt (..., h), dt_bias (h,) -> (..., h) in ``dtype``."""
    delta = dt.to(dtype)
    if dt_bias is not None:
        delta = delta + dt_bias.to(dtype)
    if dt_softplus:
        delta = F.softplus(delta)  # threshold 20: identity above, like mamba-ssm
    if tuple(dt_limit) != _NO_LIMIT:
        delta = delta.clamp(min=dt_limit[0], max=dt_limit[1])
    return delta


def _expand_groups(t: Tensor, nheads: int, dim: int) -> Tensor:
    """Repeat the group axis ``dim`` (size g) to ``nheads``: head i reads group i // (nheads // g)."""
    g = t.shape[dim]  # nheads % g == 0 is checked by _check_shapes
    if g == nheads:
        return t
    dim = dim % t.dim()
    shape = (*t.shape[: dim + 1], nheads // g, *t.shape[dim + 1 :])
    return t.unsqueeze(dim + 1).expand(shape).flatten(dim, dim + 1)


def _check_shapes(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    dt_bias: Tensor | None,
    state: Tensor | None,
) -> None:
    """Validate shapes for the scan (x: (b, l, h, p)) or the step (x: (b, h, p)); raise ValueError."""
    *bl, h, p = x.shape
    g, n = B.shape[-2:]
    expect = {
        "dt": (dt, (*bl, h)),
        "A": (A, (h,)),
        "B": (B, (*bl, g, n)),
        "C": (C, (*bl, g, n)),
        "z": (z, tuple(x.shape)),
        "dt_bias": (dt_bias, (h,)),
        "initial state": (state, (bl[0], h, p, n)),
    }
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} (x has shape {tuple(x.shape)})")
    if h % g != 0:
        raise ValueError(f"number of groups g={g} (B.shape[-2]) must divide number of heads h={h}")
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"D has shape {tuple(D.shape)}, expected ({h},) or ({h}, {p})")


def _skip_and_gate(y: Tensor, x: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D x, then * silu(z); y, x, z (..., h, p), D (h,) or (h, p)."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + x.to(y.dtype) * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _scaled_per_head(grouped: Tensor, scale: Tensor) -> Tensor:
    """grouped (b, g, c, Q, k) times per-head scales (b, h, c, Q) -> (b, h, c, Q, k).

    Head i reads group i // (h // g); the broadcast makes the per-head copy and the scaling one pass.
    """
    b, g, c, Q, k = grouped.shape
    h = scale.shape[1]
    return (grouped[:, :, None] * scale.view(b, g, h // g, c, Q, 1)).view(b, h, c, Q, k)


class _DecayedScores(torch.autograd.Function):
    """M = L o tril(CB): the diagonal-block matrix of one chunk, for every head of a group.

    a (b, h, c, Q) log-decays ``a_t = Delta_t A <= 0``; CB (b, g, c, Q, Q) the scores C_i . B_j of
    each group. Returns M (b, h, c, Q, Q) with ``M[i, j] = exp(a_{j+1} + ... + a_i) CB[i, j]`` for
    i >= j and 0 above the diagonal; head k uses group k // (h // g).

    The decay L is built as a masked cumulative *product* of the factors ``exp(a_k)`` (one ``exp``
    per step instead of one per (i, j) pair): ``L[i, j] = prod_{j<k<=i} exp(a_k)``. Every exponent
    is a single ``a_k <= 0`` and every factor lies in [0, 1], so nothing overflows, there is no
    difference of prefix sums and no ``inf - inf``; the relative error of a product of up to Q - 1
    factors is at most about Q float32 roundings (~4e-6 at Q = 64).

    Backward, with G = grad_M o M: dL[i, j]/da[k] = L[i, j] [j < k <= i], so
    grad_a[k] = sum_{i >= k} (sum_j G[i, j] - sum_j G[j, i]) (row minus column sums, O(Q^2), no
    flip-cumsum-flip over the (Q, Q) matrix), and grad_CB = tril(sum over the group's heads of grad_M o L).
    """

    @staticmethod
    def forward(ctx, a: Tensor, CB: Tensor) -> Tensor:
        b, h, c, Q = a.shape
        g = CB.shape[1]
        below = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)  # k > j
        factors = torch.where(below, a.exp()[..., :, None], 1.0)  # [k, j] = exp(a_k) if k > j, else 1
        L = factors.cumprod(dim=-2)  # [i, j] = prod_{j<k<=i} exp(a_k); 1 above the diagonal
        CB = CB.tril()  # zero above the diagonal
        M = (L.view(b, g, h // g, c, Q, Q) * CB[:, :, None]).view(b, h, c, Q, Q)
        ctx.save_for_backward(L, M)
        ctx.groups = g
        return M

    @staticmethod
    @torch.autograd.function.once_differentiable  # L is saved, not recomputed: no double backward
    def backward(ctx, grad_M: Tensor) -> tuple[Tensor, Tensor]:
        L, M = ctx.saved_tensors
        b, h, c, Q, _ = M.shape
        g = ctx.groups
        G = grad_M * M  # (b, h, c, Q, Q), 0 above the diagonal
        grad_prefix = G.sum(dim=-1) - G.sum(dim=-2)  # (b, h, c, Q)
        grad_a = grad_prefix.flip(-1).cumsum(-1).flip(-1)  # (b, h, c, Q)
        grad_CB = (grad_M * L).view(b, g, h // g, c, Q, Q).sum(dim=2).tril()  # (b, g, c, Q, Q)
        return grad_a, grad_CB


def _decayed_scores_by_sums(a: Tensor, CB: Tensor) -> Tensor:
    """What :class:`_DecayedScores` computes, from differences of prefix sums (``L[i, j] = exp(A_i - A_j)``,
    ``A = cumsum(a)``) instead of a cumulative product: the form that ONNX export can express (it has no
    cumulative product); it agrees to float32 rounding over a chunk."""
    b, h, c, Q = a.shape
    g = CB.shape[1]
    prefix = a.cumsum(dim=-1)  # (b, h, c, Q)
    below = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril()  # i >= j
    L = torch.exp(torch.where(below, prefix[..., :, None] - prefix[..., None, :], float("-inf")))
    return (L.view(b, g, h // g, c, Q, Q) * CB.tril()[:, :, None]).view(b, h, c, Q, Q)


def _chunked(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, Q: int) -> tuple[Tensor, Tensor, Tensor]:
    """A run of m steps as c = ceil(m / Q) chunks: X = Delta x (b, h, c, Q, p), a = Delta A (b, h, c, Q)
    and B (b, g, c, Q, n); the tail is padded with Delta = 0 steps (decay 1, input 0: the state passes unchanged)."""
    b, m, h, p = x.shape
    g, n = B.shape[-2:]
    c = -(-m // Q)  # number of chunks
    xd = x * delta[..., None]  # (b, m, h, p)  Delta_t x_t
    a = delta * A  # (b, m, h)     a_t = Delta_t A <= 0
    if c * Q > m:
        xd, B = (F.pad(t, (0, 0, 0, 0, 0, c * Q - m)) for t in (xd, B))
        a = F.pad(a, (0, 0, 0, c * Q - m))
    X = xd.view(b, c, Q, h, p).permute(0, 3, 1, 2, 4).contiguous()  # (b, h, c, Q, p)
    a = a.view(b, c, Q, h).permute(0, 3, 1, 2)  # (b, h, c, Q)
    Bg = B.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)  # (b, g, c, Q, n)
    return X, a, Bg


def _pass_states(X: Tensor, a: Tensor, Bg: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    """SSD steps (2)-(3): the state entering each chunk, S_in (b, h, c, p, n), and the state after the last."""
    # (2) chunk states from zero: S_k = sum_j exp(a_{j+1}+...+a_{Q-1}) Delta_j x_j B_j^T
    to_end = F.pad(a[..., 1:].flip(-1).cumsum(-1).flip(-1), (0, 1))  # (b, h, c, Q)  a_{j+1}+...+a_{Q-1}
    states = X.transpose(-1, -2) @ _scaled_per_head(Bg, torch.exp(to_end))  # (b, h, c, p, n)

    # (3) state passing: S_in[k+1] = exp(a_0+...+a_{Q-1} of chunk k) S_in[k] + S_k,  S_in[0] = s
    chunk_decay = torch.exp(a.sum(dim=-1))  # (b, h, c)
    incoming = []
    for decay_k, state_k in zip(chunk_decay.unbind(2), states.unbind(2)):  # unbind: linear-cost backward
        incoming.append(s)
        s = s * decay_k[:, :, None, None] + state_k  # (b, h, p, n)
    return torch.stack(incoming, dim=2), s  # (b, h, c, p, n), (b, h, p, n)


@compiled
def _final_state(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, s: Tensor, Q: int) -> Tensor:
    """The state after a run of chunks entered with state s (steps (2)-(3) only)."""
    return _pass_states(*_chunked(x, delta, A, B, Q), s)[1]


@compiled
def _ssd_chunks(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, s: Tensor, Q: int) -> tuple[Tensor, Tensor]:
    """SSD steps (1)-(4) over a run of consecutive chunks, all tensors in the compute dtype.

    x (b, m, h, p), delta (b, m, h), A (h,), B and C (b, m, g, n), s (b, h, p, n) the state before
    the first step. Returns y (b, m, h, p) without the D / z terms, and the state after the last step.
    """
    b, m, h, p = x.shape
    g, n = B.shape[-2:]
    X, a, Bg = _chunked(x, delta, A, B, Q)
    c = X.shape[2]
    Cg = F.pad(C, (0, 0, 0, 0, 0, c * Q - m)).view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)  # (b, g, c, Q, n)
    S_in, s = _pass_states(X, a, Bg, s)
    acs = a.cumsum(dim=-1)  # (b, h, c, Q)

    # (4) off-diagonal blocks: y_i = exp(a_0+...+a_i) S_in C_i
    y_off = _scaled_per_head(Cg, torch.exp(acs)) @ S_in.transpose(-1, -2)  # (b, h, c, Q, p)

    # (1) diagonal blocks: y_i += sum_{j<=i} (C_i . B_j) exp(a_{j+1}+...+a_i) Delta_j x_j
    CB = Cg @ Bg.transpose(-1, -2)  # (b, g, c, Q, Q)
    M = _decayed_scores_by_sums(a, CB) if torch.compiler.is_exporting() else _DecayedScores.apply(a, CB)
    y = torch.baddbmm(y_off.view(-1, Q, p), M.view(-1, Q, Q), X.view(-1, Q, p)).view(b, h, c, Q, p)
    return y.permute(0, 2, 3, 1, 4).reshape(b, c * Q, h, p)[:, :m], s  # (b, m, h, p), (b, h, p, n)


@float32_compute
def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    *,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
    initial_states: Tensor | None = None,
    return_final_states: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked SSD scan (semantics of mamba-ssm ``mamba_chunk_scan_combined``).

    Args:
        x: (b, l, h, p) inputs.   dt: (b, l, h) raw step sizes.   A: (h,) decay rates (<= 0).
        B, C: (b, l, g, n), g divides h, head i uses group i // (h // g).
        chunk_size: Q, chunk length; l need not be a multiple (padded internally with Delta = 0).
        D: (h,) or (h, p) skip.   z: (b, l, h, p) gate, y *= silu(z).   dt_bias: (h,).
        initial_states: (b, h, p, n) state before step 0 (zeros if None).
    Returns:
        y: (b, l, h, p) in x.dtype; with ``return_final_states`` the tuple (y, final_states), the
        final states (b, h, p, n) in the compute dtype (float32, or float64 for float64 x).
    """
    if x.dim() != 4 or B.dim() != 4:
        raise ValueError(f"x must be (b, l, h, p) and B, C (b, l, g, n); got {tuple(x.shape)}, {tuple(B.shape)}")
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, initial_states)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    kernel = fused_kernel("ssd_scan", x)  # mamba-ssm's Triton kernel on CUDA (tim4rec.ops.kernels)
    if kernel is not None:
        return kernel(
            x, dt, A, B, C, int(chunk_size), D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
            dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states,
        )  # fmt: skip
    b, l, h, p = x.shape
    n, Q, cdt = B.shape[-1], int(chunk_size), _compute_dtype(x)
    delta = _step_size(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (b, l, h)
    s = x.new_zeros(b, h, p, n, dtype=cdt) if initial_states is None else initial_states.to(cdt)

    # Run the chunks in blocks whose (b, h, chunks, Q, Q) intermediates hold ~_BLOCK_ELEMS numbers:
    # they stay cache-sized and reusable by the allocator, so time stays linear in l. The state is
    # carried across blocks; split (not slicing) keeps the backward linear too.
    m = Q * max(1, _BLOCK_ELEMS // max(1, b * h * Q * Q))  # steps per block
    parts = [t.split(m, dim=1) if l > 0 else () for t in (x, delta, B, C)]
    zs = z.split(m, dim=1) if z is not None and l > 0 else [None] * len(parts[0])
    ys = [x.new_empty(b, 0, h, p, dtype=cdt)]  # l = 0: empty y, state unchanged
    for x_k, delta_k, B_k, C_k, z_k in zip(*parts, zs):
        y_k, s = _ssd_chunks(x_k.to(cdt), delta_k, A.to(cdt), B_k.to(cdt), C_k.to(cdt), s, Q)
        ys.append(_skip_and_gate(y_k, x_k, D, z_k))  # (b, m, h, p)
    y = torch.cat(ys, dim=1).to(x.dtype)  # (b, l, h, p)
    return (y, s) if return_final_states else y


@float32_compute
def ssd_readout(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    positions: Tensor,
    *,
    D: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
) -> Tensor:
    """The output of :func:`ssd_scan` at one position per sequence, without computing the others.

    Steps after ``positions`` (b,) get Delta = 0, so the scan's final state is the state S_t at the
    position t; only steps (2)-(3) run (chunk states and state passing, no diagonal or
    off-diagonal output blocks), then y_t = S_t C_t + D x_t. About a third of a full scan's work;
    what a read-out (the last layer of a model scored at ``len - 1``) needs.

    Returns y (b, h, p) in x.dtype; arguments as :func:`ssd_scan` (no gate, no initial state).
    """  # fmt: skip
    if x.dim() != 4 or B.dim() != 4:
        raise ValueError(f"x must be (b, l, h, p) and B, C (b, l, g, n); got {tuple(x.shape)}, {tuple(B.shape)}")
    _check_shapes(x, dt, A, B, C, D, None, dt_bias, None)
    b, l, h, p = x.shape
    rows = torch.arange(b, device=x.device)
    kernel = fused_kernel("ssd_scan", x)
    if kernel is not None:  # the fused whole scan, read at the positions, beats the PyTorch read-out on a GPU
        y = kernel(x, dt, A, B, C, int(chunk_size), D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
        return y[rows, positions.clamp(min=0)]
    n, Q, cdt = B.shape[-1], int(chunk_size), _compute_dtype(x)
    delta = _step_size(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (b, l, h)
    after = torch.arange(l, device=x.device)[None, :] > positions[:, None]  # (b, l)
    delta = delta.masked_fill(after[..., None], 0.0)
    s = x.new_zeros(b, h, p, n, dtype=cdt)
    m = Q * max(1, _BLOCK_ELEMS // max(1, b * h * Q * Q))  # steps per block, as in ssd_scan
    for x_k, delta_k, B_k in zip(*(t.split(m, dim=1) if l > 0 else () for t in (x, delta, B))):
        s = _final_state(x_k.to(cdt), delta_k, A.to(cdt), B_k.to(cdt), s, Q)
    here = positions.clamp(min=0)
    C_t = _expand_groups(C[rows, here].to(cdt), h, 1)  # (b, h, n)
    y = (s @ C_t[..., None]).squeeze(-1)  # (b, h, p)
    return _skip_and_gate(y, x[rows, here], D, None).to(x.dtype)


@float32_compute
def ssd_step(
    state: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    *,
    D: Tensor | None = None,
    z: Tensor | None = None,
    dt_bias: Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = _NO_LIMIT,
) -> tuple[Tensor, Tensor]:
    """One step of the SSD recurrence (streaming inference); same semantics as ``ssd_scan``.

    Args:
        state: (b, h, p, n).   x: (b, h, p).   dt: (b, h).   A: (h,).   B, C: (b, g, n).
        D: (h,) or (h, p).   z: (b, h, p).   dt_bias: (h,).
    Returns:
        (y, new_state): y (b, h, p) in x.dtype, new_state (b, h, p, n) in the compute dtype.
    """
    if x.dim() != 3 or B.dim() != 3:
        raise ValueError(f"x must be (b, h, p) and B, C (b, g, n); got {tuple(x.shape)}, {tuple(B.shape)}")
    _check_shapes(x, dt, A, B, C, D, z, dt_bias, state)
    h = x.shape[1]
    cdt = _compute_dtype(x)
    delta = _step_size(dt, dt_bias, dt_softplus, dt_limit, cdt)  # (b, h)
    decay = torch.exp(delta * A.to(cdt))  # (b, h)
    Bh = _expand_groups(B.to(cdt), h, 1)  # (b, h, n)
    Ch = _expand_groups(C.to(cdt), h, 1)  # (b, h, n)
    xd = x.to(cdt) * delta[..., None]  # (b, h, p)
    new_state = state.to(cdt) * decay[..., None, None] + xd[..., :, None] * Bh[..., None, :]  # (b, h, p, n)
    y = (new_state @ Ch[..., :, None]).squeeze(-1)  # (b, h, p)
    return _skip_and_gate(y, x, D, z).to(x.dtype), new_state


# -- reference forms: the same function written as the papers write it (the oracle of the tests) --------------------
# fmt: off
def _reference_inputs(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, dt_bias: Tensor | None = None,
    dt_softplus: bool = False, dt_limit: tuple[float, float] = _NO_LIMIT,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # fmt: on
    """Step sizes Delta (b, l, h), A (h,) and per-head B, C (b, l, h, n), all in x's dtype."""
    h = x.shape[2]
    delta = _step_size(dt, dt_bias, dt_softplus, dt_limit, x.dtype)
    return delta, A.to(x.dtype), _expand_groups(B.to(x.dtype), h, 2), _expand_groups(C.to(x.dtype), h, 2)


# fmt: off
def ssd_recurrent(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, D: Tensor | None = None, z: Tensor | None = None,
    initial_states: Tensor | None = None, **step_size: Any,
) -> tuple[Tensor, Tensor]:
    # fmt: on
    """The recurrence, one step at a time (Mamba-2 paper, eq. 1): returns (y (b, l, h, p), S_l (b, h, p, n)).

        S_t = exp(Delta_t A) S_{t-1} + Delta_t x_t B_t^T      (b, h, p, n)
        y_t = S_t C_t (+ D x_t) (* silu(z_t))                 (b, h, p)

    Arguments as :func:`ssd_scan` (``step_size``: ``dt_bias``, ``dt_softplus``, ``dt_limit``);
    computes in x's dtype. O(l) sequential steps.
    """
    delta, A, Bh, Ch = _reference_inputs(x, dt, A, B, C, **step_size)
    b, l, h, p = x.shape
    S = x.new_zeros(b, h, p, B.shape[-1]) if initial_states is None else initial_states.to(x.dtype)
    ys = []
    for t in range(l):
        decay = torch.exp(delta[:, t] * A)[:, :, None, None]  # (b, h, 1, 1)
        S = decay * S + (delta[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", S, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, h, p)
    return _skip_and_gate(y, x, D, z), S


# fmt: off
def ssd_quadratic(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, *, D: Tensor | None = None, z: Tensor | None = None,
    **step_size: Any,
) -> Tensor:
    # fmt: on
    """The quadratic ("attention") form of the same map (Mamba-2 paper, Sec. 3-4): y = M (Delta x) with

        M_ij = C_i . B_j  exp(a_{j+1} + ... + a_i)  for i >= j, 0 above,     a_t = Delta_t A,

    one (l, l) matrix per head: O(l^2) time and memory. Returns y (b, l, h, p), starting from S = 0.
    """
    delta, A, Bh, Ch = _reference_inputs(x, dt, A, B, C, **step_size)
    l = x.shape[1]
    a = (delta * A).transpose(1, 2)  # (b, h, l)
    cumulative = a.cumsum(-1)
    exponent = cumulative[..., :, None] - cumulative[..., None, :]  # (b, h, l, l): a_{j+1} + ... + a_i
    causal = torch.ones(l, l, dtype=torch.bool, device=x.device).tril()
    decay = exponent.masked_fill(~causal, float("-inf")).exp()
    scores = torch.einsum("bihn,bjhn->bhij", Ch, Bh)  # C_i . B_j
    y = torch.einsum("bhij,bjhp->bihp", decay * scores, x * delta[..., None])
    return _skip_and_gate(y, x, D, z)


def _segsum(a: Tensor) -> Tensor:
    """(..., T) -> (..., T, T) with entry (i, j) = a_{j+1} + ... + a_i for i >= j (0 on the diagonal), -inf above.

    Built from masked cumulative sums of the a_k themselves, never as a difference of cumulative sums.
    """
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=torch.bool, device=a.device)
    terms = a[..., :, None].expand(*a.shape, T).masked_fill(~ones.tril(-1), 0)  # (k, j): a_k where k > j
    return terms.cumsum(-2).masked_fill(~ones.tril(), float("-inf"))  # (i, j): sum of a_k over j < k <= i


# fmt: off
def ssd_chunked_reference(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int, *, D: Tensor | None = None,
    z: Tensor | None = None, initial_states: Tensor | None = None, **step_size: Any,
) -> Tensor:
    # fmt: on
    """The chunked form in the paper's four steps (Mamba-2 paper, Sec. 6 / Listing 1): returns y (b, l, h, p).

    Chunks c of Q steps, positions l, s inside a chunk, X_s = Delta_s x_s, a_t = Delta_t A, and
    L_ls = exp(a_{s+1} + ... + a_l) for s <= l, 0 above (``exp(segsum(a))``); T_c = sum of a over chunk c:

        (1) diagonal blocks   y_l  = sum_{s <= l} (C_l . B_s) L_ls X_s              O(l Q (n + p))
        (2) chunk states      S_c  = sum_s L_Qs X_s B_s^T   (the chunk from S = 0)  O(l n p)
        (3) state passing     H_c  = sum_{k < c} exp(T_{k+1} + ... + T_{c-1}) S_k   O((l / Q)^2 n p)
                                     (+ exp(T_0 + ... + T_{c-1}) S_init)
        (4) off-diagonal      y_l += exp(a_1 + ... + a_l) H_c C_l                   O(l n p)

    per head; memory O(l Q + (l / Q)^2). Arguments as :func:`ssd_scan`; l is padded to a multiple of Q
    with Delta = 0 steps (no input, no decay) and cut back. Computes in x's dtype, plain autograd.
    """
    delta, A, Bh, Ch = _reference_inputs(x, dt, A, B, C, **step_size)
    b, l, h, p = x.shape
    Q, n = int(chunk_size), B.shape[-1]
    pad = -l % Q

    def chunks(t: Tensor) -> Tensor:  # (b, l, ...) -> (b, c, Q, ...), padded with zeros
        return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)).view(b, (l + pad) // Q, Q, *t.shape[2:])

    X, Bc, Cc = chunks(x * delta[..., None]), chunks(Bh), chunks(Ch)  # (b, c, Q, h, p | n)
    a = chunks(delta * A).permute(0, 3, 1, 2)  # (b, h, c, Q)
    L = torch.exp(_segsum(a))  # (b, h, c, Q, Q)
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", Cc, Bc, L, X)  # (1)
    states = torch.einsum("bcshn,bhcs,bcshp->bchpn", Bc, L[..., -1, :], X)  # (2)
    S0 = x.new_zeros(b, h, p, n) if initial_states is None else initial_states.to(x.dtype)
    states = torch.cat([S0[:, None], states], dim=1)  # (b, 1 + c, h, p, n): S_init, S_0, ..., S_{c-1}
    passing = torch.exp(_segsum(F.pad(a.sum(-1), (1, 0))))  # (b, h, 1 + c, 1 + c)
    H = torch.einsum("bhzk,bkhpn->bzhpn", passing, states)[:, :-1]  # (3): the state entering each chunk
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, H, a.cumsum(-1).exp())  # (4)
    y = (y_diag + y_off).flatten(1, 2)[:, :l]
    return _skip_and_gate(y, x, D, z)
