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

from tim4rec.data.batches import CAUSAL
from tim4rec.models.base import SequentialRecommender, StreamState, check_heads_divide, require
from tim4rec.models.blocks import Dropout, FeedForward, SelfAttention, init_normal_


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

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor):
        """One event (B, d) at ``position`` (B,) with the attention's key/value cache -> (out, keys, values)."""
        out, keys, values = self.attention.step(x, keys, values, position)
        return self.feed_forward(out), keys, values


class SASRec(SequentialRecommender):
    name = "sasrec"
    regime = CAUSAL
    causal = True
    streaming = True
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

    @classmethod
    def check_hyperparameters(cls, values: dict) -> None:
        check_heads_divide(values)

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
        self.dropout = Dropout(hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            SASRecBlock(
                hidden_size, n_heads, inner_size, hidden_dropout_prob, attn_dropout_prob, hidden_act, layer_norm_eps
            )
            for _ in range(n_layers)
        )
        self.apply(lambda module: init_normal_(module, initializer_range))

    def _embed(self, item_seq: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Item plus position embeddings: (B, L) ids at positions 0..L-1, or (B,) ids at ``positions`` (B,)."""
        if positions is None:
            positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        return self.dropout(self.layer_norm(self.item_embedding(item_seq) + self.position_embedding(positions)))

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        self.check_history(item_seq, item_seq_len, timestamps)
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

    # -- streaming: a key/value cache per block -------------------------------------------------
    def init_state(self, batch_size: int) -> StreamState:
        """Empty caches: per block keys and values (B, heads, L, d / heads); ``length`` (B,) events so far."""
        like = self.item_embedding.weight
        caches = {
            f"block{i}": {
                "keys": block.attention.empty_cache(batch_size, self.max_seq_length, like),
                "values": block.attention.empty_cache(batch_size, self.max_seq_length, like),
            }
            for i, block in enumerate(self.blocks)
        }
        return StreamState.merge(length=torch.zeros(batch_size, dtype=torch.long, device=like.device), **caches)

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user: item_ids, timestamps (B,) -> (hidden (B, d), state).

        O(L d) per block and event. The position table has ``max_seq_length`` rows, so a user's
        cache holds at most that many events; a longer history must be recomputed from its most
        recent events (the serving layer does so). Timestamps are not used.
        """
        self.check_events(item_ids, timestamps)
        position = state["length"]
        require(
            position < self.max_seq_length,
            f"a streaming state holds at most max_seq_length = {self.max_seq_length} events; "
            "recompute longer histories from their most recent events",
        )
        hidden = self._embed(item_ids, position)  # (B, d)
        caches = {}
        for i, block in enumerate(self.blocks):
            cache = state.part(f"block{i}")
            hidden, keys, values = block.step(hidden, cache["keys"], cache["values"], position)
            caches[f"block{i}"] = {"keys": keys, "values": values}
        return hidden, StreamState.merge(length=position + 1, **caches)
