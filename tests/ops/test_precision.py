"""Under autocast, the scans, the depthwise causal convolution and CPU attention compute in float32."""

import torch
from torch import nn

from tests.ops.test_ssd import make_inputs
from tim4rec.models.blocks import attention, causal_conv
from tim4rec.ops import ssd_scan


def test_the_ssd_scan_ignores_autocast():
    args, kw = make_inputs(l=40, h=4, g=2, D="head")
    plain = ssd_scan(*args, 8, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssd_scan(*args, 8, **kw)
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)  # not one product cast to bfloat16


def test_convolution_and_attention_run_in_float32_under_autocast():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 9, 6).bfloat16()
    q, k, v = (torch.randn(2, 3, 9, 4).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        convolved, attended = causal_conv(conv, x), attention(q, k, v, is_causal=True)
        assert torch.mm(x[0].float(), x[0].float().T).dtype == torch.bfloat16  # autocast is on here
    assert convolved.dtype == attended.dtype == torch.float32
    torch.testing.assert_close(convolved, causal_conv(conv, x.float()), rtol=0, atol=0)
    torch.testing.assert_close(attended, attention(q.float(), k.float(), v.float(), is_causal=True), rtol=0, atol=0)


def test_convolution_without_gradients_runs_in_the_autocast_dtype():
    """Evaluation and serving (no gradients): the depthwise convolution computes in bfloat16, whose
    forward oneDNN runs several times faster than float32's; its result stays close to float32's."""
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 9, 6)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            convolved = causal_conv(conv, x)
        exact = causal_conv(conv, x)
        in_bfloat16 = causal_conv(conv.to(torch.bfloat16), x.bfloat16())
    assert convolved.dtype == torch.bfloat16 and exact.dtype == torch.float32
    torch.testing.assert_close(convolved, in_bfloat16, rtol=0, atol=0)
    torch.testing.assert_close(convolved.float(), exact, rtol=0.02, atol=0.02)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves float64 alone: so does it
        assert causal_conv(conv.double(), x.double()).dtype == torch.float64
