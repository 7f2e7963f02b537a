"""The choice between mamba-ssm's fused kernels and the PyTorch scans (tim4rec.ops.kernels).

On a CPU the choice is checked with stand-in kernels that have mamba-ssm's signatures and compute
with this package's PyTorch code: the dispatch must pass them the right arguments, and models must
give the same outputs through them. The equality of the real kernels with the PyTorch path runs
where CUDA and mamba-ssm are present and is skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from tests.ops.test_ssd import make_inputs
from tim4rec.models import create
from tim4rec.ops import kernels
from tim4rec.ops.kernels import kernel_mode, paths_taken
from tim4rec.ops.selective_scan import selective_scan
from tim4rec.ops.ssd import ssd_readout, ssd_scan

torch.set_num_threads(1)

HAS_CUDA_KERNELS = torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None
WHY_SKIPPED = "needs a CUDA device and mamba-ssm (pip install mamba-ssm); the CPU tests check the dispatch"


class StandIns:
    """Kernels with mamba-ssm's signatures that record their calls and compute with the PyTorch path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def mamba_chunk_scan_combined(self, x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None,
                                  initial_states=None, seq_idx=None, dt_softplus=False,
                                  dt_limit=(0.0, float("inf")), return_final_states=False):  # fmt: skip
        self.calls.append(("ssd_scan", {"chunk_size": chunk_size, "dt_softplus": dt_softplus, "D": D, "z": z}))
        with kernel_mode("torch"):
            return ssd_scan(x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
                            dt_softplus=dt_softplus, dt_limit=dt_limit,
                            return_final_states=return_final_states)  # fmt: skip

    def selective_scan_fn(self, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):  # fmt: skip
        self.calls.append(("selective_scan", {"delta_softplus": delta_softplus}))
        with kernel_mode("torch"):
            return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state=return_last_state)  # fmt: skip


@pytest.fixture
def stand_ins(monkeypatch) -> StandIns:
    """The CPU counts as a kernel device and mamba-ssm's kernels are the stand-ins."""
    fakes = StandIns()
    monkeypatch.setattr(kernels, "KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(
        kernels,
        "_loaded",
        {"ssd_scan": (fakes.mamba_chunk_scan_combined, ""), "selective_scan": (fakes.selective_scan_fn, "")},
    )
    monkeypatch.setattr(kernels, "_taken", {})
    monkeypatch.setattr(kernels, "_announced", set())
    return fakes


def test_cpu_tensors_take_the_pytorch_path_silently(monkeypatch, capsys):
    monkeypatch.setattr(kernels, "_taken", {})
    args, kw = make_inputs(dtype=torch.float32)
    ssd_scan(*args, 4, **kw)
    assert paths_taken() == {"ssd_scan": "PyTorch (cpu)"}
    assert capsys.readouterr().err == ""  # no choice to report on a CPU


def test_the_fused_kernel_gets_the_call_and_its_arguments(stand_ins: StandIns, capsys):
    args, kw = make_inputs(D="head", z=True, dt_bias=True, dt_softplus=True, init=True, dtype=torch.float32)
    y, state = ssd_scan(*args, 4, dt_limit=(0.1, 0.9), return_final_states=True, **kw)
    with kernel_mode("torch"):
        y_torch, state_torch = ssd_scan(*args, 4, dt_limit=(0.1, 0.9), return_final_states=True, **kw)
    assert [name for name, _ in stand_ins.calls] == ["ssd_scan"]
    assert stand_ins.calls[0][1]["chunk_size"] == 4 and stand_ins.calls[0][1]["dt_softplus"] is True
    torch.testing.assert_close(y, y_torch)
    torch.testing.assert_close(state, state_torch)
    assert paths_taken()["ssd_scan"] == "PyTorch (kernels: torch)"  # the last call was forced
    err = capsys.readouterr().err
    assert "ssd_scan on cpu: mamba-ssm mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined" in err
    assert "ssd_scan on cpu: PyTorch (kernels: torch)" in err


def test_the_notice_comes_once_per_path(stand_ins: StandIns, capsys):
    args, kw = make_inputs(dtype=torch.float32)
    for _ in range(3):
        ssd_scan(*args, 4, **kw)
    err = capsys.readouterr().err  # the stand-in's own PyTorch call takes the forced path: one notice each
    assert err.count("mamba_chunk_scan_combined") == 1 and err.count("kernels: torch") == 1
    assert len(stand_ins.calls) == 3


def test_the_torch_setting_and_unsupported_calls_keep_the_pytorch_path(stand_ins: StandIns):
    args, kw = make_inputs(dtype=torch.float32)
    with kernel_mode("torch"):
        ssd_scan(*args, 4, **kw)
    ssd_scan(*make_inputs(dtype=torch.float64)[0], 4)  # float64: the kernel does not take it
    assert paths_taken()["ssd_scan"].startswith("PyTorch (arguments the fused kernel does not take")
    u, delta = torch.randn(2, 3, 7), torch.rand(2, 3, 7)
    A, B, C = -torch.rand(3, 4), torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    selective_scan(u, delta, A, B, C, initial_state=torch.zeros(2, 3, 4))  # no initial state in the kernel
    assert stand_ins.calls == []
    with pytest.raises(ValueError, match="kernels: expected one of auto, torch"):
        with kernel_mode("cuda"):
            pass


def test_a_missing_mamba_ssm_is_named_and_the_pytorch_path_runs(monkeypatch, capsys):
    monkeypatch.setattr(kernels, "KERNEL_DEVICES", ("cpu",))
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_taken", {})
    monkeypatch.setattr(kernels, "_announced", set())
    monkeypatch.setitem(kernels.FUSED, "ssd_scan", ("tim4rec_no_such_module.ssd", "scan"))
    args, kw = make_inputs(dtype=torch.float32)
    y = ssd_scan(*args, 4, **kw)
    with kernel_mode("torch"):
        torch.testing.assert_close(y, ssd_scan(*args, 4, **kw))
    assert "PyTorch (mamba-ssm is not importable: No module named 'tim4rec_no_such_module'" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["tim4rec", "ssd4rec", "mamba4rec"])
def test_models_through_the_stand_in_kernels_equal_the_pytorch_path(stand_ins: StandIns, model: str):
    torch.manual_seed(0)
    net = create(model, n_items=30, max_seq_length=12, hidden_size=16, dropout_prob=0.0).eval()
    lengths = torch.tensor([12, 7, 1])
    present = torch.arange(12)[None, :] < lengths[:, None]
    items = torch.randint(1, 31, (3, 12)) * present
    times = torch.cumsum(torch.rand(3, 12) * 1000, dim=1) * present
    with torch.no_grad():
        fused = net.full_sort_predict(items, lengths, times)
        with kernel_mode("torch"):
            plain = net.full_sort_predict(items, lengths, times)
    assert stand_ins.calls, "the model never reached the fused kernel"
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_the_read_out_through_the_kernel_equals_the_pytorch_read_out(stand_ins: StandIns):
    args, kw = make_inputs(l=13, D="head", dt_bias=True, dt_softplus=True, dtype=torch.float32)
    positions = torch.tensor([12, 3])
    fused = ssd_readout(*args, 4, positions, **kw)
    with kernel_mode("torch"):
        plain = ssd_readout(*args, 4, positions, **kw)
    assert stand_ins.calls and fused.shape == plain.shape
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAS_CUDA_KERNELS, reason=WHY_SKIPPED)
def test_mamba_ssm_kernels_equal_the_pytorch_path_on_cuda():
    cuda = lambda t: t.cuda().requires_grad_() if torch.is_tensor(t) else t  # noqa: E731
    args, kw = make_inputs(b=4, l=200, h=4, p=16, n=32, D="head", dt_bias=True, dt_softplus=True, z=True)
    outputs, grads = [], []
    for mode in ("auto", "torch"):
        leaves = [cuda(t) for t in args], {k: cuda(v) for k, v in kw.items()}
        with kernel_mode(mode):
            y = ssd_scan(*leaves[0], 32, **leaves[1])
        y.square().sum().backward()
        outputs.append(y.detach())
        grads.append([t.grad for t in leaves[0]])
    assert paths_taken()["ssd_scan"] == "PyTorch (kernels: torch)"
    scale = outputs[1].abs().max()
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-3 * scale
    for fused, plain in zip(*grads):
        assert (fused - plain).abs().max() <= 1e-3 * plain.abs().max() + 1e-6
    u, delta = torch.randn(2, 8, 50, device="cuda"), torch.rand(2, 8, 50, device="cuda")
    A = -torch.rand(8, 16, device="cuda")
    B, C = torch.randn(2, 16, 50, device="cuda"), torch.randn(2, 16, 50, device="cuda")
    fused = selective_scan(u, delta, A, B, C, delta_softplus=True)
    with kernel_mode("torch"):
        plain = selective_scan(u, delta, A, B, C, delta_softplus=True)
    assert math.isclose(float((fused - plain).abs().max()), 0.0, abs_tol=1e-3 * float(plain.abs().max()))
