"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item sequence.

``h0 = Dropout(LayerNorm(ItemEmb(s) + PosEmb(0..L-1)))``, then ``n_layers`` blocks of
causal multi-head self-attention and a GELU feed-forward, each with a post-norm residual
(RecBole's layout). Scores are dot products of the read-out state with the item table.
Timestamps are not used. Its output at t depends only on events <= t, so it trains in either
regime; ``causal`` (loss at every position) is the cheap default.
"""

from __future__ import annotations

import torch
from torch import nn

from tim4rec.models.base import SequentialRecommender
from tim4rec.models.blocks import FeedForward, SelfAttention, init_normal_


class SASRecBlock(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
    ):
        super().__init__()
        self.attention = SelfAttention(hidden_size, n_heads, attn_dropout_prob, hidden_dropout_prob, layer_norm_eps)
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout_prob, hidden_act, layer_norm_eps)

    def forward(self, x: torch.Tensor, query_positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) -> (B, L, d), or (B, 1, d) for the rows at ``query_positions`` (B,)."""
        return self.feed_forward(self.attention(x, query_positions))


class SASRec(SequentialRecommender):
    name = "sasrec"
    regime = "causal"
    causal = True
    hyperparameters = {
        "hidden_size": 64,
        "n_layers": 2,
        "n_heads": 8,
        "inner_size": 256,
        "hidden_dropout_prob": 0.2,
        "attn_dropout_prob": 0.2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
    }

    def __init__(
        self,
        n_items: int,
        max_seq_length: int,
        *,
        hidden_size: int,
        n_layers: int,
        n_heads: int,
        inner_size: int,
        hidden_dropout_prob: float,
        attn_dropout_prob: float,
        hidden_act: str,
        layer_norm_eps: float,
        initializer_range: float,
    ):
        super().__init__(n_items, max_seq_length)
        self.item_embedding = nn.Embedding(n_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_length, hidden_size)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            SASRecBlock(
                hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob, hidden_act, layer_norm_eps
            )
            for _ in range(n_layers)
        )
        self.apply(lambda module: init_normal_(module, initializer_range))

    def _embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        return self.dropout(self.layer_norm(self.item_embedding(item_seq) + self.position_embedding(positions)))

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        hidden = self._embed(item_seq)
        for block in self.blocks:
            hidden = block(hidden)
        return hidden  # (B, L, d)

    def readout(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """As ``forward`` at position len - 1, but the last block computes only that row."""
        hidden = self._embed(item_seq)
        for block in self.blocks[:-1]:
            hidden = block(hidden)
        return self.blocks[-1](hidden, (item_seq_len - 1).clamp(min=0)).squeeze(1)  # (B, d)
