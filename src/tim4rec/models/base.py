"""The model contract shared by every recommender.

A model is created by :func:`tim4rec.models.create` as
``Model(n_items, max_seq_length, **hyperparameters)`` and provides:

- ``regime``: the training regime it uses by default, ``"prefix"`` or ``"causal"``;
- ``causal``: True when its output at position t depends only on events <= t (such a model may
  also be trained in the causal regime);
- ``forward(item_seq, item_seq_len, timestamps) -> (B, L, d)`` hidden states;
- ``full_sort_predict(item_seq, item_seq_len, timestamps) -> (B, n_items + 1)`` scores at the
  read-out position ``item_seq_len - 1`` (column 0 is the padding item);
- ``calculate_loss(batch) -> scalar``: cross-entropy over all items at the batch's target
  positions (one per row for prefix batches, every position with a non-zero target for causal
  windows). Models with their own objective override it.

Inputs are right-padded: ``item_seq`` (B, L) long with ids 1..n_items and 0 at padding,
``item_seq_len`` (B,) long, ``timestamps`` (B, L) long seconds with 0 at padding.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class SequentialRecommender(nn.Module):
    """Base class: read-out, scoring against the item embedding table, and the CE loss."""

    name: ClassVar[str] = ""
    regime: ClassVar[str] = "prefix"
    causal: ClassVar[bool] = False
    #: hyper-parameter names (as in RecBole / the reference YAML files) and their defaults
    hyperparameters: ClassVar[dict[str, Any]] = {}

    @classmethod
    def translate_config(cls, layer: dict[str, Any], notices: list[str]) -> dict[str, Any]:
        """Map keys of another code base's YAML (one config layer) onto this model's keys."""
        return layer

    def __init__(self, n_items: int, max_seq_length: int):
        super().__init__()
        self.n_items = n_items
        self.max_seq_length = max_seq_length

    # -- subclasses provide forward() and item_embedding (or override item_scores) ------------
    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., n_items + 1) of every item id for hidden states (..., d)."""
        return hidden @ self.item_embedding.weight.t()

    @staticmethod
    def gather_last(hidden: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """The hidden state (B, d) at position ``item_seq_len - 1`` of hidden (B, L, d)."""
        index = (item_seq_len - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
        return hidden.gather(1, index).squeeze(1)

    def readout(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """The hidden state (B, d) at position ``item_seq_len - 1``.

        Models may override it to skip work that only positions other than the read-out need.
        """
        return self.gather_last(self.forward(item_seq, item_seq_len, timestamps), item_seq_len)

    def full_sort_predict(
        self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        return self.item_scores(self.readout(item_seq, item_seq_len, timestamps))

    def calculate_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        target = batch["target"]
        if target.dim() == 1:  # prefix: one target per row, read at len - 1
            return F.cross_entropy(
                self.full_sort_predict(batch["item_seq"], batch["item_seq_len"], batch["timestamps"]), target
            )
        hidden = self.forward(batch["item_seq"], batch["item_seq_len"], batch["timestamps"])
        positions = target > 0  # causal windows: every real position
        return F.cross_entropy(self.item_scores(hidden[positions]), target[positions])

    def extra_repr(self) -> str:
        return f"n_items={self.n_items}, max_seq_length={self.max_seq_length}"
