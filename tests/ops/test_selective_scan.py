"""Tests for tim4rec.ops.selective_scan against a float64 step-by-step reference recurrence.

Timing (not a test): ``python tests/ops/test_selective_scan.py`` prints the forward + backward time
of the chunked scan at b=16, d=128, n=32, l=200 and 800 on one thread.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from tests.ops.helpers import assert_close_scaled
from tim4rec.ops.selective_scan import selective_scan, selective_scan_step

torch.set_num_threads(1)


def reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Plain loop over t in float64 (mamba-ssm's ``selective_scan_ref``): returns (y (b, d, l), last state).

    h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t,  y_t = C_t . h_t (+ D u_t) (* silu z_t).
    """
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    u, delta, A, B, C, D, z, delta_bias, h = map(f64, (u, delta, A, B, C, D, z, delta_bias, initial_state))
    b, d, l = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64) if h is None else h
    ys = []
    for t in range(l):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))  # (b, d)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(b, d, 0)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, h


def make_inputs(
    b=2,
    d=3,
    n=4,
    l=13,
    *,
    D=False,
    z=False,
    delta_bias=False,
    delta_softplus=False,
    init=False,
    dtype=torch.float32,
    seed=0,
):
    """Random inputs: (positional args u, delta, A, B, C) and keyword args for selective_scan."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    unif = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    u = r(b, d, l)
    delta = r(b, d, l) - 0.5 if delta_softplus else unif(0.05, 0.8, b, d, l)
    A = -unif(0.2, 3.0, d, n)
    B, C = r(b, n, l), r(b, n, l)
    kw = {"delta_softplus": delta_softplus}
    if D:
        kw["D"] = r(d)
    if z:
        kw["z"] = r(b, d, l)
    if delta_bias:
        kw["delta_bias"] = 0.5 * r(d) if delta_softplus else unif(0.0, 0.3, d)
    if init:
        kw["initial_state"] = r(b, d, n)
    cast = lambda t: t.to(dtype) if torch.is_tensor(t) else t  # noqa: E731
    return [cast(t) for t in (u, delta, A, B, C)], {k: cast(v) for k, v in kw.items()}


CASES = {
    "l_not_multiple": dict(l=13, chunk=4),
    "l_one": dict(l=1, chunk=8),
    "l_multiple": dict(l=16, chunk=8),
    "l_below_chunk": dict(l=5, chunk=16),
    "chunk_one": dict(l=6, chunk=1),
    "chunk_three": dict(l=11, chunk=3),
    "init_state": dict(init=True, l=10, chunk=4),
    "D": dict(D=True),
    "z_gate": dict(z=True),
    "delta_bias": dict(delta_bias=True),
    "softplus": dict(delta_softplus=True),
    "delta_bias_softplus": dict(delta_bias=True, delta_softplus=True),
    "everything": dict(d=5, n=6, l=19, chunk=8, D=True, z=True, delta_bias=True, delta_softplus=True, init=True),
}


def _split(case):
    case = dict(case)
    chunk = case.pop("chunk", 4)
    args, kw = make_inputs(**case)
    return args, kw, chunk


def _leaves(args, kw):
    return [t.requires_grad_() for t in args + [v for v in kw.values() if torch.is_tensor(v)]]


@pytest.mark.parametrize("name", list(CASES))
def test_outputs_and_gradients_match_reference_float32(name):
    args, kw, chunk = _split(CASES[name])
    leaves = _leaves(args, kw)
    y, last = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
    y_ref, last_ref = reference(*args, **kw)
    assert y.dtype == torch.float32 and y.shape == args[0].shape
    assert last.dtype == torch.float32 and last.shape == last_ref.shape
    assert_close_scaled(y, y_ref, 1e-4)
    assert_close_scaled(last, last_ref, 1e-4)
    # random cotangents on both outputs, so every term of the backward is exercised
    gen = torch.Generator().manual_seed(1)
    w_y = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    w_last = torch.randn(last.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((y.double() * w_y).sum() + (last.double() * w_last).sum(), leaves)
    want = torch.autograd.grad((y_ref * w_y).sum() + (last_ref * w_last).sum(), leaves)
    for g_got, g_want in zip(got, want):
        assert_close_scaled(g_got, g_want, 1e-4)


def test_output_only_and_last_state_only_gradients():
    """Backward with one of the two outputs unused (its gradient arrives as None)."""
    args, kw, chunk = _split(CASES["everything"])
    leaves = _leaves(args, kw)
    y, last = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
    y_ref, last_ref = reference(*args, **kw)
    for out, out_ref in ((y, y_ref), (last, last_ref)):
        got = torch.autograd.grad(out.sum(), leaves, retain_graph=True, allow_unused=True)
        want = torch.autograd.grad(out_ref.sum(), leaves, retain_graph=True, allow_unused=True)
        for g_got, g_want in zip(got, want):
            if g_want is None:
                assert g_got is None or g_got.abs().max() == 0
            else:
                assert_close_scaled(g_got, g_want, 1e-4)


@pytest.mark.parametrize("name", ["everything", "l_one", "chunk_three"])
def test_gradcheck_float64(name):
    case = dict(CASES[name], d=2, n=3, b=2)
    chunk = case.pop("chunk")
    case["l"] = min(case["l"], 7)
    args, kw = make_inputs(**case, dtype=torch.float64)
    leaves = _leaves(args, kw)
    names = [k for k, v in kw.items() if torch.is_tensor(v)]

    def fn(*tensors):
        u, delta, A, B, C = tensors[:5]
        extra = dict(zip(names, tensors[5:]))
        y, last = selective_scan(
            u, delta, A, B, C, delta_softplus=kw["delta_softplus"], return_last_state=True, chunk_size=chunk, **extra
        )
        return y, last

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_float64_in_float64_out_and_tight():
    args, kw, chunk = _split(CASES["everything"])
    args = [a.double() for a in args]
    kw = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    y, last = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
    assert y.dtype == torch.float64 and last.dtype == torch.float64
    y_ref, last_ref = reference(*args, **kw)
    assert_close_scaled(y, y_ref, 1e-12)
    assert_close_scaled(last, last_ref, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    args, kw, chunk = _split(dict(CASES["everything"], init=False))
    args = [a.to(dtype) for a in args]
    kw = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}
    y, last = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
    assert y.dtype == dtype and last.dtype == torch.float32
    y_ref, last_ref = reference(*args, **kw)  # same (rounded) inputs, float64 math
    assert_close_scaled(last, last_ref, 1e-4)  # the state is float32: only float32 rounding
    assert_close_scaled(y, y_ref, 1e-2)  # y is rounded to the half dtype at the end


def test_strong_decay_is_finite_and_exact():
    """Delta A down to -100 per step (exp underflows to 0 in float32): no inf, no nan, still exact."""
    args, kw, _ = _split(dict(l=40, d=4, n=8))
    u, delta, A, B, C = args
    delta = delta * 40.0  # Delta up to 32, A down to -3
    leaves = _leaves([u, delta, A, B, C], {})
    y, last = selective_scan(*leaves, return_last_state=True, chunk_size=16)
    y_ref, last_ref = reference(*leaves)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert_close_scaled(y, y_ref, 1e-4)
    got = torch.autograd.grad(y.sum() + last.sum(), leaves)
    want = torch.autograd.grad(y_ref.sum() + last_ref.sum(), leaves)
    for g_got, g_want in zip(got, want):
        assert torch.isfinite(g_got).all()
        assert_close_scaled(g_got, g_want, 1e-4)


def test_chunk_size_invariance_and_sensitivity():
    args, kw, _ = _split(CASES["everything"])
    y1, s1 = selective_scan(*args, return_last_state=True, chunk_size=1, **kw)
    for chunk in (2, 5, 8, 64):
        y, s = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
        assert_close_scaled(y, y1, 1e-5)
        assert_close_scaled(s, s1, 1e-5)
    # that tolerance is far below the effect of each ingredient
    scale = y1.abs().max()
    variants = {
        "no D": {**kw, "D": None},
        "no z": {**kw, "z": None},
        "no init": {**kw, "initial_state": None},
        "no softplus": {**kw, "delta_softplus": False},
        "no bias": {**kw, "delta_bias": None},
    }
    for name, changed in variants.items():
        assert (selective_scan(*args, **changed) - y1).abs().max() > 1e-2 * scale, name
    u, delta, A, B, C = args
    for name, changed in {
        "A": (u, delta, 1.1 * A, B, C),
        "B<->C": (u, delta, A, C, B),
        "shift u": (u.roll(1, dims=2), delta, A, B, C),
    }.items():
        assert (selective_scan(*changed, **kw) - y1).abs().max() > 1e-2 * scale, name


def test_step_repeated_equals_scan():
    args, kw, chunk = _split(CASES["everything"])
    u, delta, A, B, C = args
    y_scan, last_scan = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
    state = kw["initial_state"]
    step_kw = {k: kw[k] for k in ("D", "delta_bias", "delta_softplus")}
    ys = []
    for t in range(u.shape[-1]):
        y, state = selective_scan_step(
            state, u[..., t], delta[..., t], A, B[..., t], C[..., t], z=kw["z"][..., t], **step_kw
        )
        ys.append(y)
    assert_close_scaled(torch.stack(ys, dim=-1), y_scan, 1e-5)
    assert_close_scaled(state, last_scan, 1e-5)


def test_split_sequence_with_carried_state_equals_whole():
    args, kw, chunk = _split(CASES["everything"])
    cut = 7
    head = [t[..., :cut] for t in args[:2]] + [args[2]] + [t[..., :cut] for t in args[3:]]
    tail = [t[..., cut:] for t in args[:2]] + [args[2]] + [t[..., cut:] for t in args[3:]]
    kw_head = {**kw, "z": kw["z"][..., :cut]}
    kw_tail = {**kw, "z": kw["z"][..., cut:]}
    y_head, mid = selective_scan(*head, return_last_state=True, chunk_size=chunk, **kw_head)
    y_tail, last = selective_scan(*tail, return_last_state=True, chunk_size=chunk, **{**kw_tail, "initial_state": mid})
    y, last_whole = selective_scan(*args, return_last_state=True, chunk_size=chunk, **kw)
    assert_close_scaled(torch.cat([y_head, y_tail], dim=-1), y, 1e-5)
    assert_close_scaled(last, last_whole, 1e-5)


def test_nothing_of_the_size_of_all_states_is_saved_for_backward():
    """Memory linear in l with a small constant: the (b, d, n, l) states are recomputed, not kept."""
    b, d, n, l, chunk = 2, 8, 16, 64, 8
    args, kw = make_inputs(b=b, d=d, n=n, l=l, D=True, z=True, delta_bias=True, delta_softplus=True)
    leaves = _leaves(args, kw)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = selective_scan(*args, chunk_size=chunk, **kw)
    assert max(saved) < b * d * n * l / 2  # boundary states: b d n l / chunk
    assert sum(saved) < b * d * n * l
    y.sum().backward()
    assert all(t.grad is not None for t in leaves)


def test_empty_sequence():
    args, kw, _ = _split(dict(CASES["init_state"], l=0))
    y, last = selective_scan(*args, return_last_state=True, **kw)
    assert y.shape == args[0].shape
    torch.testing.assert_close(last, kw["initial_state"])


def test_shape_errors():
    args, kw, _ = _split(CASES["everything"])
    u, delta, A, B, C = args
    with pytest.raises(ValueError, match="delta"):
        selective_scan(u, delta[..., :-1], A, B, C)
    with pytest.raises(ValueError, match="B has shape"):
        selective_scan(u, delta, A, B[:, None], C)
    with pytest.raises(ValueError, match="state"):
        selective_scan(u, delta, A, B, C, initial_state=kw["initial_state"][:, :, :-1])
    with pytest.raises(ValueError, match="real"):
        selective_scan(u, delta, A.to(torch.complex64), B, C)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan(u, delta, A, B, C, chunk_size=0)
    with pytest.raises(ValueError, match="u must be"):
        selective_scan_step(kw["initial_state"], u, delta, A, B, C)


def benchmark(lengths=(200, 800), b=16, d=128, n=32, chunk_size=8, repeats=3) -> None:
    """Print forward + backward seconds of the chunked scan (best of ``repeats``) on one thread."""
    torch.set_num_threads(1)
    for l in lengths:
        gen = torch.Generator().manual_seed(0)
        u, dt, z = (torch.randn(b, d, l, generator=gen).requires_grad_() for _ in range(3))
        B, C = (torch.randn(b, n, l, generator=gen).requires_grad_() for _ in range(2))
        A_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1).requires_grad_()
        D, bias = torch.ones(d, requires_grad=True), torch.zeros(d, requires_grad=True)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            y = selective_scan(u, dt, -torch.exp(A_log), B, C, D, z, bias, True, chunk_size=chunk_size)
            y.sum().backward()
            best = min(best, time.perf_counter() - start)
        print(f"b={b} d={d} n={n} l={l} chunk={chunk_size}: forward + backward {best:.3f} s")


if __name__ == "__main__":
    benchmark()
