"""Tests for tim4rec.ops.ssd against a float64 step-by-step reference recurrence."""

from __future__ import annotations

import math

import pytest
import torch

from tests.ops.helpers import assert_close_scaled
from tim4rec.ops import ssd as ssd_module
from tim4rec.ops.ssd import ssd_chunked_reference, ssd_quadratic, ssd_recurrent, ssd_scan, ssd_step

torch.set_num_threads(1)

INF_LIMIT = (0.0, math.inf)


def reference(*args, **kw):
    """The step-by-step recurrence in float64 (tim4rec.ops.ssd.ssd_recurrent): (y, final state)."""
    f64 = lambda t: t.double() if torch.is_tensor(t) else t  # noqa: E731
    return ssd_recurrent(*map(f64, args), **{k: f64(v) for k, v in kw.items()})


def make_inputs(
    b=2,
    l=13,
    h=2,
    p=3,
    g=1,
    n=4,
    *,
    dtype=torch.float32,
    D=None,
    z=False,
    dt_bias=False,
    dt_softplus=False,
    init=False,
    seed=0,
):
    """Random inputs; returns (positional args, keyword args) for ssd_scan minus chunk_size."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    u = lambda lo, hi, *s: lo + (hi - lo) * torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    x = r(b, l, h, p)
    dt = r(b, l, h) - 1.0 if dt_softplus else u(0.05, 0.6, b, l, h)
    A = -u(0.3, 1.5, h)
    B, C = r(b, l, g, n), r(b, l, g, n)
    kw = {"dt_softplus": dt_softplus}
    if D == "head":
        kw["D"] = r(h)
    elif D == "chan":
        kw["D"] = r(h, p)
    if z:
        kw["z"] = r(b, l, h, p)
    if dt_bias:
        kw["dt_bias"] = 0.5 * r(h) if dt_softplus else u(0.0, 0.2, h)
    if init:
        kw["initial_states"] = r(b, h, p, n)
    cast = lambda t: t.to(dtype) if torch.is_tensor(t) else t  # noqa: E731
    return [cast(t) for t in (x, dt, A, B, C)], {k: cast(v) for k, v in kw.items()}


CASES = {
    "l_not_multiple": dict(l=13, chunk=4),
    "l_one": dict(l=1, chunk=8),
    "l_multiple": dict(l=16, chunk=8),
    "l_below_chunk": dict(l=5, chunk=16),
    "chunk_one": dict(l=6, chunk=1),
    "groups_h4_g2": dict(h=4, g=2, l=11, chunk=4),
    "groups_h4_g1": dict(h=4, g=1, l=9, chunk=4),
    "init_state": dict(init=True, l=10, chunk=4),
    "D_head": dict(D="head"),
    "D_chan": dict(D="chan"),
    "z_gate": dict(z=True),
    "dt_bias": dict(dt_bias=True),
    "dt_bias_softplus": dict(dt_bias=True, dt_softplus=True),
    "softplus": dict(dt_softplus=True),
    "dt_limit": dict(dt_limit=(0.15, 0.4)),
    "dt_limit_softplus": dict(dt_softplus=True, dt_bias=True, dt_limit=(0.2, 0.5)),
    "everything": dict(
        h=4, g=2, l=19, chunk=8, D="chan", z=True, dt_bias=True, dt_softplus=True, dt_limit=(0.05, 2.0), init=True
    ),
}


def _split(case):
    case = dict(case)
    chunk = case.pop("chunk", 4)
    limit = case.pop("dt_limit", None)
    args, kw = make_inputs(**case)
    if limit is not None:
        kw["dt_limit"] = limit
    return args, kw, chunk


@pytest.mark.parametrize("name", list(CASES))
def test_scan_matches_reference_float32(name):
    args, kw, chunk = _split(CASES[name])
    y, final = ssd_scan(*args, chunk, return_final_states=True, **kw)
    y_ref, final_ref = reference(*args, **kw)
    assert y.dtype == torch.float32 and y.shape == args[0].shape
    assert final.shape == final_ref.shape
    assert_close_scaled(y, y_ref, 1e-4)
    assert_close_scaled(final, final_ref, 1e-4)


@pytest.mark.parametrize("chunks_per_block", [1, 2, 3])
def test_blocks_of_chunks_match_reference(monkeypatch, chunks_per_block):
    """Small block budget: several blocks of chunks, state carried between them, padded last block."""
    args, kw, chunk = _split(CASES["everything"])  # b=2, h=4, l=19, chunk 8 -> 3 chunks
    monkeypatch.setattr(ssd_module, "_BLOCK_ELEMS", chunks_per_block * 2 * 4 * chunk * chunk)
    leaves = [t.requires_grad_() for t in args + [v for v in kw.values() if torch.is_tensor(v)]]
    y, final = ssd_scan(*args, chunk, return_final_states=True, **kw)
    y_ref, final_ref = reference(*args, **kw)
    assert_close_scaled(y, y_ref, 1e-4)
    assert_close_scaled(final, final_ref, 1e-4)
    got = torch.autograd.grad(y.sum() + final.sum(), leaves)
    want = torch.autograd.grad(y_ref.sum() + final_ref.sum(), leaves)
    for g_got, g_want in zip(got, want):
        assert_close_scaled(g_got, g_want, 1e-4)


def test_empty_sequence():
    args, kw, _ = _split(dict(CASES["init_state"], l=0))
    y, final = ssd_scan(*args, 4, return_final_states=True, **kw)
    assert y.shape == args[0].shape
    torch.testing.assert_close(final, kw["initial_states"])


def test_dt_limit_case_actually_clamps():
    args, kw, _ = _split(CASES["dt_limit"])
    dt = args[1]
    assert (dt < 0.15).any() and (dt > 0.4).any()
    y_clamped = ssd_scan(*args, 4, **kw)
    y_free = ssd_scan(*args, 4, **{k: v for k, v in kw.items() if k != "dt_limit"})
    assert (y_clamped - y_free).abs().max() > 1e-2


def test_float64_in_float64_out_and_tight():
    args, kw, chunk = _split(CASES["everything"])
    args = [a.double() for a in args]
    kw = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    y, final = ssd_scan(*args, chunk, return_final_states=True, **kw)
    assert y.dtype == torch.float64 and final.dtype == torch.float64
    y_ref, final_ref = reference(*args, **kw)
    assert_close_scaled(y, y_ref, 1e-12)
    assert_close_scaled(final, final_ref, 1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_computed_in_float32(dtype):
    args, kw, chunk = _split(dict(CASES["everything"], init=False))
    args = [a.to(dtype) for a in args]
    kw = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}
    y, final = ssd_scan(*args, chunk, return_final_states=True, **kw)
    assert y.dtype == dtype and final.dtype == torch.float32
    y_ref, final_ref = reference(*args, **kw)  # same (rounded) inputs, float64 math
    assert_close_scaled(final, final_ref, 1e-4)  # state is float32: only float32 rounding
    assert_close_scaled(y, y_ref, 1e-2)  # y is rounded to the half dtype at the end


def test_chunk_size_invariance_and_sensitivity():
    args, kw, _ = _split(CASES["everything"])
    y4, s4 = ssd_scan(*args, 4, return_final_states=True, **kw)
    y8, s8 = ssd_scan(*args, 8, return_final_states=True, **kw)
    y32, s32 = ssd_scan(*args, 32, return_final_states=True, **kw)
    for y, s in ((y8, s8), (y32, s32)):
        assert_close_scaled(y, y4, 1e-5)
        assert_close_scaled(s, s4, 1e-5)
    # the tolerance used above is far below the effect of each ingredient of the model
    scale = y4.abs().max()
    variants = {
        "no D": {**kw, "D": None},
        "no z": {**kw, "z": None},
        "no init": {**kw, "initial_states": None},
        "no softplus": {**kw, "dt_softplus": False},
    }
    for name, kv in variants.items():
        assert (ssd_scan(*args, 4, **kv) - y4).abs().max() > 1e-2 * scale, name
    x, dt, A, B, C = args
    for name, changed in {
        "A": (x, dt, 1.1 * A, B, C),
        "B<->C": (x, dt, A, C, B),
        "shift x": (x.roll(1, dims=1), dt, A, B, C),
    }.items():
        assert (ssd_scan(*changed, 4, **kw) - y4).abs().max() > 1e-2 * scale, name


GRAD_CASES = ["l_not_multiple", "groups_h4_g2", "D_chan", "everything"]


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradients_match_reference(name):
    args, kw, chunk = _split(CASES[name])
    args = [a.double().requires_grad_() for a in args]
    kw = {k: (v.double().requires_grad_() if torch.is_tensor(v) else v) for k, v in kw.items()}
    leaves = args + [v for v in kw.values() if torch.is_tensor(v)]
    gen = torch.Generator().manual_seed(1)
    gy = torch.randn(args[0].shape, generator=gen, dtype=torch.float64)
    gs = torch.randn(
        args[0].shape[0], args[0].shape[2], args[0].shape[3], args[3].shape[-1], generator=gen, dtype=torch.float64
    )

    def grads(fn, **extra):
        y, s = fn(*args, **extra, **kw)
        return torch.autograd.grad((y * gy).sum() + (s * gs).sum(), leaves)

    got = grads(ssd_scan, chunk_size=chunk, return_final_states=True)
    want = grads(reference)
    for g_got, g_want in zip(got, want):
        assert_close_scaled(g_got, g_want, 1e-10)
    # float32 path gives the same gradients to float32 accuracy
    args32 = [a.detach().float().requires_grad_() for a in args]
    kw32 = {k: (v.detach().float().requires_grad_() if torch.is_tensor(v) else v) for k, v in kw.items()}
    leaves32 = args32 + [v for v in kw32.values() if torch.is_tensor(v)]
    y, s = ssd_scan(*args32, chunk, return_final_states=True, **kw32)
    got32 = torch.autograd.grad((y * gy.float()).sum() + (s * gs.float()).sum(), leaves32)
    for g_got, g_want in zip(got32, want):
        assert_close_scaled(g_got, g_want, 1e-4)


@pytest.mark.parametrize("chunk", [2, 4])
def test_gradcheck(chunk):
    args, kw = make_inputs(
        b=1,
        l=5,
        h=4,
        p=2,
        g=2,
        n=3,
        dtype=torch.float64,
        D="head",
        z=True,
        dt_bias=True,
        dt_softplus=True,
        init=True,
        seed=3,
    )
    names = ["D", "z", "dt_bias", "initial_states"]
    tensors = [t.requires_grad_() for t in args + [kw[k] for k in names]]

    def fn(x, dt, A, B, C, D, z, dt_bias, init):
        return ssd_scan(
            x,
            dt,
            A,
            B,
            C,
            chunk,
            D=D,
            z=z,
            dt_bias=dt_bias,
            dt_softplus=True,
            initial_states=init,
            return_final_states=True,
        )

    assert torch.autograd.gradcheck(fn, tensors)


def test_gradcheck_D_per_channel_and_step():
    args, kw = make_inputs(b=1, l=3, h=2, p=2, g=1, n=2, dtype=torch.float64, D="chan", seed=4)
    tensors = [t.requires_grad_() for t in args + [kw["D"]]]
    assert torch.autograd.gradcheck(lambda *t: ssd_scan(*t[:5], 2, D=t[5]), tensors)
    x, dt, A, B, C = (t.detach() for t in args)
    state = torch.randn(1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    step_in = [
        state,
        x[:, 0].requires_grad_(),
        dt[:, 0].requires_grad_(),
        A.requires_grad_(),
        B[:, 0].requires_grad_(),
        C[:, 0].requires_grad_(),
    ]
    assert torch.autograd.gradcheck(lambda *t: ssd_step(*t, D=kw["D"].detach()), step_in)


@pytest.mark.parametrize("init", [False, True])
def test_repeated_step_equals_scan(init):
    args, kw, chunk = _split(dict(CASES["everything"], init=init))
    x, dt, A, B, C = args
    y_scan, final_scan = ssd_scan(*args, chunk, return_final_states=True, **kw)
    state = kw.pop("initial_states", None)
    if state is None:
        state = torch.zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])
    ys = []
    for t in range(x.shape[1]):
        z_t = kw["z"][:, t]
        y_t, state = ssd_step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], **{**kw, "z": z_t})
        ys.append(y_t)
    assert_close_scaled(torch.stack(ys, dim=1), y_scan, 1e-5)
    assert_close_scaled(state, final_scan, 1e-5)


def test_large_dt_no_nan_gradients():
    args, kw = make_inputs(b=2, l=21, h=2, p=3, n=4, D="head", dt_softplus=True, dt_bias=True)
    x, dt, A, B, C = args
    dt = dt.clone()
    dt[:, ::3] = 1e4  # Delta A ~ -1e4: exp underflows to exactly 0
    dt[:, 1] = 80.0
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, kw["D"], kw["dt_bias"])]
    y, s = ssd_scan(x, dt, A, B, C, 8, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True, return_final_states=True)
    y_ref, s_ref = reference(x, dt, A, B, C, D=kw["D"], dt_bias=kw["dt_bias"], dt_softplus=True)
    assert_close_scaled(y, y_ref, 1e-4)
    grads = torch.autograd.grad(y.square().sum() + s.square().sum(), leaves)
    for g in grads:
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("l,chunk", [(5, 4), (1, 16), (17, 8)])
def test_padding_no_nan_gradients_and_state_unchanged(l, chunk):
    args, kw = make_inputs(l=l, init=True, dt_bias=True, dt_softplus=True)  # softplus(0 + bias) != 0
    leaves = [t.requires_grad_() for t in args + [kw["initial_states"], kw["dt_bias"]]]
    y, s = ssd_scan(*args, chunk, return_final_states=True, **kw)
    _, s_ref = reference(*args, **kw)
    assert_close_scaled(s, s_ref, 1e-4)
    for g in torch.autograd.grad(y.sum() + s.sum(), leaves):
        assert torch.isfinite(g).all()


def test_step_shapes_and_dtypes():
    args, kw = make_inputs(l=1, h=4, g=2, D="head", dtype=torch.bfloat16)
    x, dt, A, B, C = (t[:, 0] if t.dim() > 1 else t for t in args)
    state = torch.zeros(2, 4, 3, 4)
    y, new_state = ssd_step(state, x, dt, A, B, C, D=kw["D"])
    assert y.shape == (2, 4, 3) and y.dtype == torch.bfloat16
    assert new_state.shape == (2, 4, 3, 4) and new_state.dtype == torch.float32


@pytest.mark.parametrize(
    "bad",
    [
        "g_not_dividing",
        "dt_shape",
        "A_shape",
        "C_shape",
        "D_shape",
        "z_shape",
        "bias_shape",
        "init_shape",
        "x_ndim",
        "chunk",
    ],
)
def test_scan_shape_errors(bad):
    args, kw = make_inputs(h=4, g=2, p=3, n=4)
    x, dt, A, B, C = args
    chunk = 4
    if bad == "g_not_dividing":
        B, C = B[:, :, :1].repeat(1, 1, 3, 1), C[:, :, :1].repeat(1, 1, 3, 1)
    elif bad == "dt_shape":
        dt = dt[:, :-1]
    elif bad == "A_shape":
        A = A[:2]
    elif bad == "C_shape":
        C = C[..., :2]
    elif bad == "D_shape":
        kw["D"] = torch.ones(3)
    elif bad == "z_shape":
        kw["z"] = torch.ones(2, 13, 4, 2)
    elif bad == "bias_shape":
        kw["dt_bias"] = torch.ones(4, 1)
    elif bad == "init_shape":
        kw["initial_states"] = torch.ones(2, 4, 4, 3)
    elif bad == "x_ndim":
        x = x[0]
    elif bad == "chunk":
        chunk = 0
    with pytest.raises(ValueError):
        ssd_scan(x, dt, A, B, C, chunk, **kw)


def test_step_shape_errors():
    state = torch.zeros(2, 4, 3, 5)
    x, dt, A = torch.zeros(2, 4, 3), torch.zeros(2, 4), torch.zeros(4)
    with pytest.raises(ValueError, match="divide"):
        ssd_step(state, x, dt, A, torch.zeros(2, 3, 5), torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match="state"):
        ssd_step(torch.zeros(2, 4, 3, 4), x, dt, A, torch.zeros(2, 2, 5), torch.zeros(2, 2, 5))


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_long_chunk_decay_products_accurate(scale):
    """Q = 64: the in-chunk decays are products of up to 63 factors; slow, medium and fast decay
    stay within 1e-5 of the float64 loop (forward) and 1e-4 (gradients)."""
    args, kw = make_inputs(b=2, l=150, h=2, p=3, n=4)
    x, dt, A, B, C = args
    dt = dt * scale
    leaves = [t.requires_grad_() for t in (x, dt, B, C)]
    y = ssd_scan(x, dt, A, B, C, 64)
    y_ref, _ = reference(x, dt, A, B, C)
    assert_close_scaled(y, y_ref, 1e-5)
    grads = torch.autograd.grad(y.square().sum(), leaves)
    grads_ref = torch.autograd.grad(y_ref.square().sum(), leaves)
    for g, g_ref in zip(grads, grads_ref):
        assert_close_scaled(g, g_ref, 1e-4)


@pytest.mark.parametrize(
    "name", ["l_not_multiple", "groups_h4_g2", "D_chan", "z_gate", "dt_limit_softplus", "everything"]
)
def test_the_quadratic_form_is_the_same_function(name):
    """The paper's two forms agree: the (l, l) matrix form equals the step-by-step recurrence."""
    args, kw, _ = _split(CASES[name])
    kw = {k: v.double() if torch.is_tensor(v) else v for k, v in kw.items() if k != "initial_states"}
    args = [t.double() for t in args]
    y_recurrent, _ = ssd_recurrent(*args, **kw)
    torch.testing.assert_close(ssd_quadratic(*args, **kw), y_recurrent, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["l_not_multiple", "groups_h4_g2", "D_chan", "dt_limit_softplus", "chunk_one"])
def test_readout_equals_the_scan_at_each_rows_position(name, monkeypatch):
    args, kw, chunk = _split(CASES[name])
    kw = {k: v for k, v in kw.items() if k not in ("z", "initial_states")}
    b, l = args[0].shape[:2]
    positions = torch.tensor([l - 1, 0, l // 2][:b] + [1] * max(0, b - 3))
    leaves = [t.clone().requires_grad_() for t in args]
    y_all = ssd_scan(*leaves, chunk, **kw)
    expected = y_all[torch.arange(b), positions]
    got = ssd_module.ssd_readout(*args, chunk, positions, **kw)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)
    # gradients through the read-out equal those of the full scan read at the positions
    leaves_r = [t.clone().requires_grad_() for t in args]
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((expected * weights).sum(), leaves)
    grads_r = torch.autograd.grad((ssd_module.ssd_readout(*leaves_r, chunk, positions, **kw) * weights).sum(), leaves_r)
    for g, gr in zip(grads, grads_r):
        torch.testing.assert_close(gr, g, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(ssd_module, "_BLOCK_ELEMS", 1)  # one chunk per block: the state crosses blocks
    torch.testing.assert_close(
        ssd_module.ssd_readout(*args, chunk, positions, **kw), expected.detach(), rtol=1e-5, atol=1e-5
    )


CHUNKED_CASES = {
    "l_multiple_g1": dict(l=16, chunk=4),
    "l_not_multiple_g1": dict(l=13, chunk=4),
    "l_below_chunk": dict(l=5, chunk=8),
    "chunk_one": dict(l=6, chunk=1),
    "l_multiple_g_half_h": dict(h=4, g=2, l=12, chunk=4, D="head", z=True),
    "l_not_multiple_g_half_h": dict(h=4, g=2, l=11, chunk=4, D="chan", z=True),
    "everything": CASES["everything"],  # + dt_bias, softplus, dt_limit, initial state
}


def _float64(args, kw):
    return [t.double() for t in args], {k: v.double() if torch.is_tensor(v) else v for k, v in kw.items()}


@pytest.mark.parametrize("name", list(CHUNKED_CASES))
def test_the_four_step_chunked_form_is_the_same_function(name):
    """The paper's four steps (diagonal blocks, chunk states, state passing, off-diagonal) equal the recurrence."""
    args, kw, chunk = _split(CHUNKED_CASES[name])
    args, kw = _float64(args, kw)
    y_recurrent, _ = ssd_recurrent(*args, **kw)
    y = ssd_chunked_reference(*args, chunk, **kw)
    assert y.dtype == torch.float64 and y.shape == args[0].shape
    torch.testing.assert_close(y, y_recurrent, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["l_not_multiple_g1", "l_not_multiple_g_half_h", "everything"])
def test_scan_equals_the_four_step_chunked_form(name):
    args, kw, chunk = _split(CHUNKED_CASES[name])
    args64, kw64 = _float64(args, kw)
    y_ref = ssd_chunked_reference(*args64, chunk, **kw64)
    torch.testing.assert_close(ssd_scan(*args64, chunk, **kw64), y_ref, rtol=1e-10, atol=1e-10)
    assert_close_scaled(ssd_scan(*args, chunk, **kw), y_ref, 1e-4)  # the float32 scan
