"""Mamba-1 selective scan (S6): a chunked scan for training and a one-step recurrence, in pure PyTorch.

Semantics of mamba-ssm's ``selective_scan_fn`` (Gu & Dao, "Mamba", 2023), for each batch element,
channel d and state index n (``A <= 0`` real, B and C input-dependent with one group):

    Delta_t  = softplus(delta_t + delta_bias)              (bias and softplus optional)
    h_t[n]   = exp(Delta_t A[d, n]) h_{t-1}[n] + Delta_t B_t[n] u_t
    y_t      = sum_n C_t[n] h_t[n] + D u_t,    then  y_t <- y_t * silu(z_t)   (when z is given)

Why not Mamba-2's quadratic SSD form: here the decay ``exp(Delta_t A[d, n])`` depends on the state
index n, so the within-chunk "attention" matrix would be a (b, d, n, Q, Q) tensor -- Q times the
size of the states themselves. Instead :func:`selective_scan` works on the states directly:

1. Time-major layout: every tensor is (l, b, ...), so slices in time are contiguous blocks.
2. The sequence is cut into chunks of Q steps. Inside a chunk the states come from a log-depth
   doubling (Hillis-Steele) scan of the pairs ``(a_t, x_t) = (exp(Delta_t A), Delta_t B_t u_t)``:
   ``ceil(log2 Q)`` rounds of ``x_t += a_t x_{t-s}``, ``a_t *= a_{t-s}`` (s = 1, 2, 4, ...), all
   time steps of a round at once. Every factor is a product of decays in (0, 1]: no exponential of
   a positive number, no division by a vanishing cumulative product, no ``inf - inf``.
3. The state entering a chunk is folded into its first input (``x_0 += a_0 h_in``); a short loop
   over the ``ceil(l / Q)`` chunks carries the (b, d, n) state.
4. A custom autograd function keeps only its inputs and the (b, d, n) state at each chunk boundary.
   The backward walks the chunks in reverse, recomputes a chunk's states from its boundary state,
   and runs the adjoint recurrence ``g_t = dL/dh_t + a_{t+1} g_{t+1}`` with the same doubling scan
   run backwards in time. Memory: ``O(b d n l / Q)`` saved plus ``O(b d n Q)`` work buffers; time
   ``O(b d n l log Q)``; the large buffers of one chunk stay cache-sized.

Numerics: all work in float32 (float64 for float64 ``u``); the output has ``u``'s dtype, the last
state the compute dtype. Correct for ``A <= 0`` and ``Delta >= 0`` (values are not checked).

Chunk size: small chunks win on a CPU (fewer doubling rounds, cache-sized buffers). Forward +
backward on one CPU thread at b=16, d=128, n=32 (``python tests/ops/test_selective_scan.py``):
about 0.3 s at l=200 and 1.3 s at l=800 with the default Q=8; 0.5 s / 2.0 s with Q=16 and
0.8 s / 3.2 s with Q=64 (shared, loaded machine: timings are rough).

On CUDA, when mamba-ssm is installed and no ``initial_state`` is given, :func:`selective_scan`
calls mamba-ssm's fused kernel instead (same semantics; the choice: :mod:`tim4rec.ops.kernels`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tim4rec.ops.kernels import fused_kernel
from tim4rec.ops.precision import float32_compute

__all__ = ["selective_scan", "selective_scan_step"]


def _compute_dtype(u: Tensor) -> torch.dtype:
    """float64 for float64 inputs, float32 otherwise (also for float16 / bfloat16)."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _step_size(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    """Delta = softplus(delta + delta_bias); delta (b, d, ...) and delta_bias (d,), in ``dtype``."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        bias = delta_bias.to(dtype)
        delta = delta + (bias[:, None] if delta.dim() == 3 else bias)
    if delta_softplus:
        delta = F.softplus(delta)  # threshold 20: identity above, like mamba-ssm
    return delta


def _skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D u, then * silu(z); y, u, z (b, d, ...) and D (d,)."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + u.to(y.dtype) * (D[:, None] if y.dim() == 3 else D)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def _check_shapes(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    state: Tensor | None,
) -> None:
    """Validate the scan's (u: (b, d, l)) or the step's (u: (b, d)) shapes; raise ValueError."""
    if A.dim() != 2 or A.is_complex():
        raise ValueError(f"A must be a real (d, n) tensor, got shape {tuple(A.shape)} and dtype {A.dtype}")
    b, d = u.shape[:2]
    n = A.shape[1]
    rest = tuple(u.shape[2:])  # (l,) for the scan, () for the step
    expect = {
        "delta": (delta, (b, d, *rest)),
        "A": (A, (d, n)),
        "B": (B, (b, n, *rest)),
        "C": (C, (b, n, *rest)),
        "D": (D, (d,)),
        "z": (z, (b, d, *rest)),
        "delta_bias": (delta_bias, (d,)),
        "state": (state, (b, d, n)),
    }
    for name, (t, shape) in expect.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} (u has shape {tuple(u.shape)})")


# -- the chunked scan ------------------------------------------------------------------------------
def _doubling_scan(a: Tensor, x: Tensor, reverse: bool = False) -> Tensor:
    """All states of a first-order linear recurrence along dim 0, in ceil(log2 T) rounds.

    a, x: (T, ...) of the same shape; neither is modified.
    Forward:  ``h_t = a_t h_{t-1} + x_t`` with ``h_{-1} = 0`` (a_0 is not used).
    Reverse:  ``h_t = a_{t+1} h_{t+1} + x_t`` with ``h_T = 0`` (the adjoint recurrence; a_0 unused).
    Round s adds the term s steps away times the product of the s decays in between, then
    doubles those window products, so after the last round every h_t is the full sum.
    """
    T = x.shape[0]
    if T == 1:
        return x.clone()
    x_buffers = (torch.empty_like(x), torch.empty_like(x))
    a_buffers = (torch.empty_like(a), torch.empty_like(a))
    s, k = 1, 0
    while s < T:
        x_new = x_buffers[k % 2]
        if reverse:  # h_t += (a_{t+1} ... a_{t+s}) h_{t+s} for t < T - s; a[j] holds a_j ... a_{j+s-1}
            x_new[T - s :].copy_(x[T - s :])
            torch.addcmul(x[: T - s], a[1 : T - s + 1], x[s:], out=x_new[: T - s])
        else:  # h_t += (a_t ... a_{t-s+1}) h_{t-s} for t >= s;  a[j] holds a_j ... a_{j-s+1}
            x_new[:s].copy_(x[:s])
            torch.addcmul(x[s:], a[s:], x[: T - s], out=x_new[s:])
        if 2 * s < T:  # the window products are needed by a further round
            a_new = a_buffers[k % 2]
            if reverse:
                a_new[T - s :].copy_(a[T - s :])
                torch.mul(a[: T - s], a[s:], out=a_new[: T - s])
            else:
                a_new[:s].copy_(a[:s])
                torch.mul(a[s:], a[: T - s], out=a_new[s:])
            a = a_new
        x = x_new
        s, k = 2 * s, k + 1
    return x


def _chunk_states(h_in: Tensor, delta: Tensor, du: Tensor, A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Decays a (q, b, d, n) and states H (q, b, d, n) of one chunk entered with state h_in (b, d, n).

    delta, du = Delta * u: (q, b, d); A (d, n); B (q, b, n).
    """
    a = torch.exp(delta[..., None] * A)  # (q, b, d, n)  exp(Delta_t A) in (0, 1]
    x = du[..., None] * B[:, :, None, :]  # (q, b, d, n)  Delta_t B_t u_t
    x[0].addcmul_(a[0], h_in)  # the incoming state enters through step 0
    return a, _doubling_scan(a, x)


class _SelectiveScanCore(torch.autograd.Function):
    """``y_t = C_t . h_t`` and the last state, time-major; custom backward with recomputation.

    Inputs (compute dtype, contiguous): u, delta (l, b, d); A (d, n); B, C (l, b, n); h0 (b, d, n);
    chunk (int). Outputs: y (l, b, d) without the D / z terms, and h_{l-1} (b, d, n).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, chunk: int):
        ctx.set_materialize_grads(False)
        l = u.shape[0]
        du = delta * u
        y = torch.empty_like(u)
        h, boundary = h0, []
        for t0 in range(0, l, chunk):
            part = slice(t0, min(t0 + chunk, l))
            boundary.append(h)
            _, H = _chunk_states(h, delta[part], du[part], A, B[part])
            y[part] = (H @ C[part][..., None]).squeeze(-1)  # (q, b, d): sum over n
            h = H[-1].clone()
        ctx.chunk = chunk
        ctx.save_for_backward(u, delta, A, B, C, torch.stack(boundary))
        return y, h

    @staticmethod
    def backward(ctx, grad_y: Tensor | None, grad_last: Tensor | None):
        u, delta, A, B, C, boundary = ctx.saved_tensors
        l, chunk = u.shape[0], ctx.chunk
        if grad_y is None:
            grad_y = torch.zeros_like(u)
        du = delta * u
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(delta)
        grad_B, grad_C = torch.empty_like(B), torch.empty_like(C)
        grad_A = torch.zeros_like(A)
        carry = grad_last  # dL/dh at the last step of the current chunk coming from later steps
        starts = list(range(0, l, chunk))
        for k in reversed(range(len(starts))):
            part = slice(starts[k], min(starts[k] + chunk, l))
            h_in, gy = boundary[k], grad_y[part]
            a, H = _chunk_states(h_in, delta[part], du[part], A, B[part])
            grad_C[part] = (gy[..., None, :] @ H).squeeze(-2)  # (q, b, n)  sum_d gy H
            g = gy[..., None] * C[part][:, :, None, :]  # (q, b, d, n)  dL/dh_t, direct
            if carry is not None:
                g[-1] += carry
            G = _doubling_scan(a, g, reverse=True)  # (q, b, d, n)  total dL/dh_t
            carry = a[0] * G[0]  # into the previous chunk
            # dL/d(Delta_t A) = G_t a_t h_{t-1}
            grad_dA = torch.empty_like(a)  # (q, b, d, n)
            torch.mul(a[0], h_in, out=grad_dA[0])
            torch.mul(a[1:], H[:-1], out=grad_dA[1:])
            grad_dA.mul_(G)
            GB = (G @ B[part][..., None]).squeeze(-1)  # (q, b, d)  sum_n G B
            grad_u[part] = GB * delta[part]
            grad_delta[part] = GB * u[part] + (grad_dA * A).sum(-1)
            grad_A += grad_dA.mul_(delta[part][..., None]).sum((0, 1))  # grad_dA is spent here
            grad_B[part] = (du[part][..., None, :] @ G).squeeze(-2)  # (q, b, n)  sum_d G Delta u
        return grad_u, grad_delta, grad_A, grad_B, grad_C, carry, None


@float32_compute
def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int = 8,
) -> Tensor | tuple[Tensor, Tensor]:
    """Chunked selective scan (semantics of mamba-ssm ``selective_scan_fn``, one group).

    Args:
        u: (b, d, l) inputs.   delta: (b, d, l) raw step sizes.   A: (d, n) real decay rates (<= 0).
        B, C: (b, n, l) input-dependent projections.   D: (d,) skip.   z: (b, d, l) gate, y *= silu(z).
        delta_bias: (d,), added to delta before the optional softplus.
        initial_state: (b, d, n) state before step 0 (zeros if None).
        chunk_size: Q, steps per chunk (any l works; the last chunk may be shorter). Results do not
            depend on it beyond rounding; 8 is the fastest on a CPU (see the module docstring).
    Returns:
        y: (b, d, l) in u.dtype; with ``return_last_state`` the tuple (y, last_state), the last
        state (b, d, n) in the compute dtype (float32, or float64 for float64 u).
    """
    if u.dim() != 3:
        raise ValueError(f"u must be (b, d, l), got shape {tuple(u.shape)}")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    kernel = fused_kernel("selective_scan", u, supported=initial_state is None)  # (tim4rec.ops.kernels)
    if kernel is not None:
        return kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    b, d, l = u.shape
    cdt = _compute_dtype(u)
    h0 = u.new_zeros(b, d, A.shape[1], dtype=cdt) if initial_state is None else initial_state.to(cdt)
    if l == 0:
        y = u.new_zeros(b, d, 0)
        return (y, h0) if return_last_state else y
    time_major = lambda t: t.to(cdt).permute(2, 0, 1).contiguous()  # noqa: E731  (b, ., l) -> (l, b, .)
    delta = _step_size(delta, delta_bias, delta_softplus, cdt)
    y, last = _SelectiveScanCore.apply(
        time_major(u),
        time_major(delta),
        A.to(cdt).contiguous(),
        time_major(B),
        time_major(C),
        h0.contiguous(),
        int(chunk_size),
    )
    y = _skip_and_gate(y.permute(1, 2, 0), u, D, z).to(u.dtype)  # (b, d, l)
    return (y, last) if return_last_state else y


@float32_compute
def selective_scan_step(
    state: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> tuple[Tensor, Tensor]:
    """One step of the recurrence (streaming inference); same semantics as :func:`selective_scan`.

    Args:
        state: (b, d, n).   u, delta, z: (b, d).   A: (d, n).   B, C: (b, n).   D, delta_bias: (d,).
    Returns:
        (y, new_state): y (b, d) in u.dtype, new_state (b, d, n) in the compute dtype.
    """
    if u.dim() != 2:
        raise ValueError(f"u must be (b, d), got shape {tuple(u.shape)}")
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, state)
    cdt = _compute_dtype(u)
    delta = _step_size(delta, delta_bias, delta_softplus, cdt)  # (b, d)
    decay = torch.exp(delta[..., None] * A.to(cdt))  # (b, d, n)
    du = delta * u.to(cdt)  # (b, d)
    new_state = state.to(cdt) * decay + du[..., None] * B.to(cdt)[:, None, :]
    y = (new_state @ C.to(cdt)[..., None]).squeeze(-1)  # (b, d)
    return _skip_and_gate(y, u, D, z).to(u.dtype), new_state
