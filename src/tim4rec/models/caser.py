"""Caser (Tang & Wang, WSDM 2018) as in RecBole 1.2, without the user embedding.

The history is an image ``E`` (L x d) of item embeddings, fed to two kinds of convolution:

- vertical: ``nv`` filters of size (L x 1), i.e. ``nv`` learned weightings of the L positions,
  giving ``nv * d`` features;
- horizontal: for every height ``h`` in 1..L, ``nh`` filters of size (h x d) slid over the
  positions, ReLU, then max-pooled over positions, giving ``nh * L`` features.

``z = ReLU(fc1(Dropout([vertical; horizontal])))`` and the sequence representation is
``ReLU(fc2(z))``; scores are its dot products with the item table (column 0 = padding). Caser
gives one vector per history, not one per position: :meth:`forward` returns it broadcast over
the L positions (a view) for the contract, and the model trains in the prefix regime only.

Differences from RecBole 1.2, and why:

- No user embedding. RecBole's ``fc2`` reads ``[z; UserEmb(u)]`` (2d -> d); here ``fc2`` reads
  ``z`` alone (d -> d), because ``full_sort_predict(item_seq, item_seq_len, timestamps)`` of the
  shared contract receives no user id. Its regulariser accordingly has no user term.
- Padding content is ignored: slots at positions >= len are read as the padding id 0 whatever
  they hold. With clean inputs this is exactly RecBole.

Padding, as RecBole: histories are right-padded and the convolutions see the raw L slots, so a
short history sits at the start of the image, followed by copies of the padding row. That row is
a real vector (RecBole's N(0, 1/d) initialisation overwrites the zero row of ``padding_idx``;
it receives no gradient from the lookup, only from the regulariser), so padding slots feed the
vertical filters and the horizontal max-pools; and the vertical filters weight slots by their
distance from the oldest item, not from the most recent one.

Loss: cross-entropy at the prefix target plus RecBole's regulariser, ``reg_weight`` times the sum
of the (unsquared) L2 norms of the weights of the item table, the vertical convolution, every
horizontal convolution, ``fc1`` and ``fc2``.

Initialisation as RecBole: item table N(0, 1/d), linear weights Xavier-normal with zero biases,
convolutions PyTorch's default. Cost: the horizontal filters take about ``nh * d * L^3 / 6``
multiply-adds per history (about 7e8 at L = 200).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.data.batches import PREFIX, Batch
from tim4rec.models.base import SequentialRecommender
from tim4rec.models.blocks import Dropout
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.values import fraction, nonnegative_number, positive_int


@dataclasses.dataclass(frozen=True)
class CaserHyperparameters(Hyperparameters):
    embedding_size: int = hyperparameter(64, positive_int, size=True)
    nv: int = hyperparameter(4, positive_int, size=True)
    nh: int = hyperparameter(8, positive_int, size=True)
    dropout_prob: float = hyperparameter(0.2, fraction)
    reg_weight: float = hyperparameter(1e-4, nonnegative_number)


class Caser(SequentialRecommender):
    name = "caser"
    regime = PREFIX
    causal = False
    Hyperparameters = CaserHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: CaserHyperparameters):
        super().__init__(n_items, max_seq_length)
        embedding_size, nv, nh = hp.embedding_size, hp.nv, hp.nh
        self.embedding_size, self.nv, self.nh, self.reg_weight = embedding_size, nv, nh, hp.reg_weight
        self.item_embedding = nn.Embedding(n_items + 1, embedding_size, padding_idx=0)
        self.conv_v = nn.Conv2d(1, nv, kernel_size=(max_seq_length, 1))
        self.conv_h = nn.ModuleList(
            nn.Conv2d(1, nh, kernel_size=(height, embedding_size)) for height in range(1, max_seq_length + 1)
        )
        self.fc1 = nn.Linear(nv * embedding_size + nh * max_seq_length, embedding_size)
        self.fc2 = nn.Linear(embedding_size, embedding_size)
        self.dropout = Dropout(hp.dropout_prob)
        nn.init.normal_(self.item_embedding.weight, 0.0, 1.0 / embedding_size)
        for linear in (self.fc1, self.fc2):
            nn.init.xavier_normal_(linear.weight)
            nn.init.zeros_(linear.bias)

    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, l) right-padded ids (l <= L; padded to L, the span of the filters), (B,) lengths -> (B, d)."""
        b, length = item_seq.shape
        if length < self.max_seq_length:
            item_seq = torch.nn.functional.pad(item_seq, (0, self.max_seq_length - length))
            length = self.max_seq_length
        positions = torch.arange(length, device=item_seq.device)
        ids = item_seq.masked_fill(positions[None, :] >= item_seq_len[:, None], 0)
        image = self.item_embedding(ids)  # (B, L, d)
        vertical = self.conv_v(image[:, None]).reshape(b, self.nv * self.embedding_size)
        # A (h x d) Conv2d over the one-channel image is a Conv1d of width h over the d channels.
        channels = image.transpose(1, 2)  # (B, d, L)
        horizontal = [
            F.relu(F.conv1d(channels, conv.weight[:, 0].transpose(1, 2), conv.bias)).amax(dim=2)  # (B, nh)
            for conv in self.conv_h
        ]
        features = self.dropout(torch.cat([vertical, *horizontal], dim=1))  # (B, nv*d + nh*L)
        return F.relu(self.fc2(F.relu(self.fc1(features))))

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """The (B, d) representation broadcast to (B, L, d) (a view; every position holds it)."""
        self.check_history(item_seq, item_seq_len, timestamps)
        return self.encode(item_seq, item_seq_len)[:, None, :].expand(-1, item_seq.shape[1], -1)

    def readout(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        return self.encode(item_seq, item_seq_len)  # (B, d)

    def regularization(self) -> torch.Tensor:
        """``reg_weight`` x the sum of the L2 norms of the embedding, convolution and linear weights."""
        weights = [self.item_embedding.weight, self.conv_v.weight, self.fc1.weight, self.fc2.weight]
        weights += [conv.weight for conv in self.conv_h]
        return self.reg_weight * torch.stack([weight.norm(2) for weight in weights]).sum()

    def target_states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if batch.regime is not PREFIX:
            raise ValueError("Caser is not causal: it trains on prefix samples (one target per row) only")
        return super().target_states(batch)
