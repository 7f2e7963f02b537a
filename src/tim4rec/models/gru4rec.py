"""GRU4Rec (Hidasi et al., ICLR 2016; Tan et al., DLRS 2016) as in RecBole 1.2.

``h = Dense(GRU(Dropout(ItemEmb(s))))``: item embeddings (``embedding_size``) go through
embedding dropout and a ``num_layers`` GRU without biases (``hidden_size``, no dropout between
layers), and a dense layer projects every GRU output back to ``embedding_size`` so that the
read-out state at ``len - 1`` can be scored against the item embedding table (the base class's
``item_scores``). Timestamps are not used.

Initialisation as RecBole: the item table (padding row included) Xavier-normal, the first GRU
layer's input and recurrent weights Xavier-uniform, everything else PyTorch's default.

A GRU is causal (the output at t depends only on events <= t), so the model trains in the cheap
causal regime by default and streams: :meth:`init_state` / :meth:`step` feed one event per user
and give the same scores as :meth:`full_sort_predict` on the same history.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tim4rec.data.batches import CAUSAL
from tim4rec.models.base import SequentialRecommender, StreamState
from tim4rec.models.blocks import Dropout
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.values import fraction, positive_int


@dataclasses.dataclass(frozen=True)
class GRU4RecHyperparameters(Hyperparameters):
    embedding_size: int = hyperparameter(64, positive_int, size=True)
    hidden_size: int = hyperparameter(128, positive_int, size=True)
    num_layers: int = hyperparameter(2, positive_int, size=True)
    dropout_prob: float = hyperparameter(0.4, fraction)


class GRU4Rec(SequentialRecommender):
    name = "gru4rec"
    regime = CAUSAL
    causal = True
    streaming = True
    fixed_length = False  # a recurrence: any length
    Hyperparameters = GRU4RecHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: GRU4RecHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.item_embedding = nn.Embedding(n_items + 1, hp.embedding_size, padding_idx=0)
        self.emb_dropout = Dropout(hp.dropout_prob)
        self.gru_layers = nn.GRU(
            hp.embedding_size, hp.hidden_size, num_layers=hp.num_layers, bias=False, batch_first=True
        )
        self.dense = nn.Linear(hp.hidden_size, hp.embedding_size)  # GRU output -> item-embedding space
        nn.init.xavier_normal_(self.item_embedding.weight)
        nn.init.xavier_uniform_(self.gru_layers.weight_ih_l0)
        nn.init.xavier_uniform_(self.gru_layers.weight_hh_l0)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, embedding_size); position t sees events 0..t only."""
        self.check_history(item_seq, item_seq_len, timestamps)
        output, _ = self.gru_layers(self.emb_dropout(self.item_embedding(item_seq)))  # (B, L, hidden)
        return self.dense(output)

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch_size: int) -> StreamState:
        """Empty streaming state: the GRU hidden state, ``hidden`` (B, num_layers, hidden_size) zeros."""
        weight = self.gru_layers.weight_hh_l0
        layers, hidden = self.gru_layers.num_layers, self.gru_layers.hidden_size
        return StreamState(
            {"hidden": torch.zeros(batch_size, layers, hidden, device=weight.device, dtype=weight.dtype)}
        )

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user: item_ids, timestamps (B,) -> (hidden (B, d), state)."""
        self.check_events(item_ids, timestamps)
        embedded = self.emb_dropout(self.item_embedding(item_ids))[:, None, :]  # (B, 1, embedding_size)
        hidden = state["hidden"].transpose(0, 1).contiguous()  # (layers, B, hidden): the GRU's layout
        output, hidden = self.gru_layers(embedded, hidden)  # (B, 1, hidden), (layers, B, hidden)
        return self.dense(output[:, 0]), StreamState({"hidden": hidden.transpose(0, 1)})
