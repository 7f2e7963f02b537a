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
from tim4rec.models.base import SequentialRecommender, StreamState, require
from tim4rec.models.blocks import AttentionBlock, AttentionHyperparameters, Dropout, init_normal_


class SASRec(SequentialRecommender):
    name = "sasrec"
    regime = CAUSAL
    causal = True
    streaming = True
    Hyperparameters = AttentionHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: AttentionHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.item_embedding = nn.Embedding(n_items + 1, hp.hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_seq_length, hp.hidden_size)
        self.layer_norm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
        self.dropout = Dropout(hp.hidden_dropout_prob)
        self.blocks = nn.ModuleList(AttentionBlock(hp) for _ in range(hp.n_layers))
        self.apply(lambda module: init_normal_(module, hp.initializer_range))

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
