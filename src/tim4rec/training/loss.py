"""The training objective as a module, so that distributed data parallel can wrap it.

``NextItemLoss(model)(batch) -> (summed loss, number of targets)``: the sum and the count rather
than the mean, so that a data-parallel step can divide by the count over all ranks. DDP hooks
gradients through a module's ``forward``; wrapping this module (which owns the model) makes the
whole loss computation that forward.
"""

from __future__ import annotations

import torch
from torch import nn

from tim4rec.data.batches import Batch
from tim4rec.models.base import SequentialRecommender, cross_entropy_terms
from tim4rec.ops.precision import PRECISIONS, mixed_precision
from tim4rec.training.negatives import NegativeSampler


class NextItemLoss(nn.Module):
    """Cross-entropy over all items at the model's target positions (plus its regularisation).

    ``fused``: the output layer and the loss in one pass (the same value, less memory traffic).
    ``sampler``: a sampled softmax over the target and the sampler's negatives, drawn anew for
    every forward pass (a micro-batch) and shared by its rows, instead of all items.
    ``mixed_precision``: ``off``, ``bf16`` or ``fp16``: the model's forward under ``torch.autocast``
    in that type (its scans, depthwise convolutions and CPU attention stay float32:
    :mod:`tim4rec.ops.precision`); with ``bf16`` the fused output layer's products run in bfloat16
    too, its softmax statistics and the loss in float32. fp16 also needs a gradient scaler, which
    the trainer keeps, and leaves the output layer in float32 (its logits could overflow fp16).
    """

    def __init__(
        self,
        model: SequentialRecommender,
        *,
        fused: bool = True,
        sampler: NegativeSampler | None = None,
        mixed_precision: str = "off",
    ):
        super().__init__()
        self.model = model
        self.fused = fused
        self.sampler = sampler
        self.mixed_precision = mixed_precision
        self.precision = PRECISIONS[mixed_precision]

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        device = batch.item_seq.device
        negatives = self.sampler.draw(device) if self.sampler is not None else None
        autocast = None if self.precision is None else mixed_precision(self.mixed_precision, device.type)
        products = torch.bfloat16 if self.precision == torch.bfloat16 else None
        return cross_entropy_terms(
            self.model, batch, fused=self.fused, negatives=negatives, autocast=autocast, compute_dtype=products
        )
