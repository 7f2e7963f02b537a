"""The model's FLOPs of a step, counted once on the eager reference path, and the machine's matmul rate.

Model FLOP utilisation (MFU) is the model's FLOPs per second over the float32 matmul rate measured
in the same process. The FLOPs are the model's, not an implementation's: they are counted with
:class:`torch.utils.flop_counter.FlopCounterMode` on the plain path (the reference cross-entropy
over materialised logits, the SSD at chunk size 32) and then divided by the time of whatever path
is measured, so a faster kernel raises the figure and a wasteful one (a bigger chunk, the quadratic
form, a recomputation) cannot.

FlopCounterMode does not see PyTorch's fused CPU attention kernel
(``_scaled_dot_product_flash_attention_for_cpu`` and its backward): they are registered here with
the standard attention formula (``torch.utils.flop_counter.sdpa_flop_count``: the two batched
products, 4 b h l_q l_k d, whether causal or not, and twice that backward).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from tim4rec.data.batches import Batch, Regime
from tim4rec.models import create, model_defaults
from tim4rec.models.base import cross_entropy_terms

REFERENCE_CHUNK = 32
_aten = torch.ops.aten


def _register_cpu_attention() -> None:
    forward = _aten._scaled_dot_product_flash_attention_for_cpu
    if forward in flop_counter.flop_registry:
        return

    @register_flop_formula(forward)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(_aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


_register_cpu_attention()


def random_batch(regime: Regime | str, rows: int, length: int, items: int, seed: int = 0) -> Batch:
    """Full-length random histories: a causal batch (a target at every position) or a prefix batch."""
    regime = Regime(regime)
    generator = torch.Generator().manual_seed(seed)
    item_seq = torch.randint(1, items + 1, (rows, length), generator=generator)
    timestamps = 1_000_000_000 + torch.cumsum(torch.randint(0, 100_000, (rows, length), generator=generator), 1)
    lengths = torch.full((rows,), length)
    target_shape = (rows, length) if regime is Regime.CAUSAL else (rows,)
    return Batch(regime, item_seq, lengths, timestamps, torch.randint(1, items + 1, target_shape, generator=generator))


def counted_flops(function: Any) -> int:
    """The FLOPs that :class:`FlopCounterMode` sees in one call of ``function`` (the path that is timed)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def step_flops(model_name: str, hyperparameters: dict[str, Any], items: int, length: int, rows: int, what: str) -> int:
    """FLOPs of one ``what`` on ``rows`` full-length histories, on the eager reference path.

    ``what``: ``causal`` (loss at every position, forward and backward), ``readout`` (loss at the
    read-out position, forward and backward) or ``infer`` (``full_sort_predict``).
    """
    reference = dict(hyperparameters)
    if "chunk_size" in model_defaults(model_name):
        reference["chunk_size"] = REFERENCE_CHUNK
    model = create(model_name, items, length, **reference)
    batch = random_batch("causal" if what == "causal" else "prefix", rows, length, items)
    with FlopCounterMode(display=False) as counter:
        if what == "infer":
            model.eval()
            with torch.no_grad():
                model.full_sort_predict(batch.item_seq, batch.item_seq_len, batch.timestamps)
        else:
            batch = model.prepare_training_batch(batch)
            total, count = cross_entropy_terms(model, batch, fused=False)
            (total / max(count, 1)).backward()
    return counter.get_total_flops()


def matmul_rate(device: str = "cpu", size: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32) -> float:
    """The (size x size) matmul rate in ``dtype`` in FLOP/s at the current thread count (median of ``repeats``)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)
