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


class NextItemLoss(nn.Module):
    """Cross-entropy over all items at the model's target positions (plus its regularisation).

    ``fused``: the output layer and the loss in one pass (the same value, less memory traffic).
    """

    def __init__(self, model: SequentialRecommender, *, fused: bool = True):
        super().__init__()
        self.model = model
        self.fused = fused

    def forward(self, batch: Batch) -> tuple[torch.Tensor, int]:
        return cross_entropy_terms(self.model, batch, fused=self.fused)
