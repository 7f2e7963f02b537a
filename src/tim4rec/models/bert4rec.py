"""BERT4Rec (Sun et al., CIKM 2019) as in RecBole 1.2: a bidirectional transformer trained to
fill in masked items (the Cloze task).

Network. ``h0 = Dropout(LayerNorm(ItemEmb(s) + PosEmb(0..L-1)))``, ``n_layers`` blocks of
bidirectional multi-head self-attention and a feed-forward, each with a post-norm residual
(RecBole's transformer layout; pad keys are masked, so padding never influences a real
position), then RecBole 1.2's output head ``LayerNorm(GELU(Linear(h)))``. Scores are
``h @ ItemEmb[0..n_items]^T + output_bias``. With ``output_head: false`` the head and the bias
are left out: scores are ``h @ ItemEmb[0..n_items]^T``. Timestamps are not used.

Mask token. The item table has ``n_items + 2`` rows: padding 0, items 1..n_items and the mask
token ``n_items + 1``. The mask row is an input only: scores and the loss cover the ids
``0..n_items``, so the mask token is never ranked (column 0 is the padding item, as everywhere).

Inference. The mask token is written at position ``len`` right after the history and the state
there is scored; when the history fills all L slots, the oldest item is dropped first (the mask
then sits at L-1). RecBole 1.2's ``reconstruct_test_data`` differs slightly: it drops the
oldest item for every history, not only full ones.

Training (``calculate_loss``), RecBole 1.2's ``mask_itemseq`` transform with its defaults, on
prefix samples (history -> target) by default, or, with ``train_regime: causal``, on windows of L
training events, the masks drawn over each whole window as the BERT4Rec paper trains (each
user's events then pass through an epoch about once instead of once per prefix: on ML-1M,
about 6,000 windows instead of about 1,000,000 prefixes). The target item of the sample is **not used**: only the
history is. Per batch, with probability ``ft_ratio`` it is a fine-tuning batch, else a Cloze
batch:

- Cloze: every real position is replaced by the mask token independently with probability
  ``mask_ratio``;
- fine-tuning: only the last history item (position ``len - 1``) is replaced.

The loss is the cross-entropy of the original items at masked positions, averaged over the
batch's scored positions, with two RecBole details kept: at most ``int(mask_ratio * L)`` masked
positions per row are scored (the most recent ones; further masked positions stay masked in the
input but carry no loss), and position 0 is never scored (RecBole pads its index lists with 0,
so a mask at position 0 is indistinguishable from padding). A batch with no scored position
gives a zero loss (RecBole would give NaN). Random draws come from torch's global generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import torch
from torch import nn

from tim4rec.data.batches import CAUSAL, PREFIX, Batch
from tim4rec.models.base import SequentialRecommender
from tim4rec.models.blocks import AttentionBlock, AttentionHyperparameters, Dropout, init_normal_
from tim4rec.models.hyperparameters import hyperparameter
from tim4rec.values import boolean, fraction, open_fraction, positive_int, unit_interval

CLOZE_MASKED = "cloze_masked"  # Batch.extras key: (B, L) bool, the positions replaced by the mask token


@dataclasses.dataclass(frozen=True)
class BERT4RecHyperparameters(AttentionHyperparameters):
    n_heads: int = hyperparameter(2, positive_int, size=True)
    hidden_dropout_prob: float = hyperparameter(0.4, fraction)
    attn_dropout_prob: float = hyperparameter(0.4, fraction)
    mask_ratio: float = hyperparameter(0.2, open_fraction)
    #: causal-regime windows: the window's last target joins the sequence, so a user's most recent training
    #: item is a cloze target too (the paper trains on whole sequences); false: the window's inputs only
    cloze_last_target: bool = hyperparameter(True, boolean)
    ft_ratio: float = hyperparameter(0.5, unit_interval)  # RecBole 1.2's default: the share of mask-the-last batches
    #: RecBole 1.2's head, LayerNorm(GELU(Linear(h))) and a bias per item before the tied product; false: the plain
    #: tied product ``h @ ItemEmb^T`` (the RecSys 2022/2023 HuggingFace-based BERT4Rec studies' form)
    output_head: bool = hyperparameter(True, boolean)


class BERT4Rec(SequentialRecommender):
    name = "bert4rec"
    regime = PREFIX
    causal = False
    window_objective = True  # cloze masks over whole windows, as the paper trains (train_regime: causal)
    Hyperparameters = BERT4RecHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: BERT4RecHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.mask_ratio = hp.mask_ratio
        self.ft_ratio = hp.ft_ratio
        self.cloze_last_target = hp.cloze_last_target
        self.mask_token = n_items + 1
        self.mask_item_length = max(1, int(hp.mask_ratio * max_seq_length))  # scored masks per row
        self.item_embedding = nn.Embedding(n_items + 2, hp.hidden_size, padding_idx=0)  # + mask token
        self.position_embedding = nn.Embedding(max_seq_length, hp.hidden_size)
        self.layer_norm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
        self.dropout = Dropout(hp.hidden_dropout_prob)
        self.blocks = nn.ModuleList(AttentionBlock(hp, causal=False) for _ in range(hp.n_layers))
        self.output_head = hp.output_head
        if hp.output_head:
            self.output_ffn = nn.Linear(hp.hidden_size, hp.hidden_size)
            self.output_gelu = nn.GELU()
            self.output_ln = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
            self.output_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.apply(lambda module: init_normal_(module, hp.initializer_range))

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, L) item ids -> (B, L, d); positions >= len are ignored as keys."""
        self.check_history(item_seq, item_seq_len, timestamps)
        return self._encode(item_seq, item_seq_len)

    def _encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` on ids that may hold the mask token (the model's own inputs only)."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        real = positions[None, :] < item_seq_len[:, None]  # (B, L)
        hidden = self.dropout(self.layer_norm(self.item_embedding(item_seq) + self.position_embedding(positions)))
        for block in self.blocks:
            hidden = block(hidden, real=real)
        if not self.output_head:
            return hidden
        return self.output_ln(self.output_gelu(self.output_ffn(hidden)))

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores of ids 0..n_items (the mask token's row is left out) plus RecBole's output bias, if any."""
        return self.item_embedding.weight[: self.n_items + 1], self.output_bias if self.output_head else None

    @staticmethod
    def append(
        item_seq: torch.Tensor, item_seq_len: torch.Tensor, ids: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write ``ids`` (B,) or one id after each history: (B, L), (B,) -> (B, L) ids, (B,) new lengths.

        A full history (len == L) loses its oldest item so that the new one fits at position L-1.
        """
        length = item_seq.shape[1]
        full = item_seq_len >= length
        shifted = torch.where(full[:, None], item_seq.roll(-1, dims=1), item_seq)
        new_len = torch.where(full, item_seq_len, item_seq_len + 1)
        ids = torch.as_tensor(ids, device=item_seq.device).expand(len(item_seq))
        return shifted.scatter(1, (new_len - 1)[:, None], ids[:, None].to(item_seq.dtype)), new_len

    def append_mask(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask token written after each history (:meth:`append`)."""
        return self.append(item_seq, item_seq_len, self.mask_token)

    def predict_hidden(
        self,
        item_seq: torch.Tensor,
        item_seq_len: torch.Tensor,
        timestamps: torch.Tensor,
        request_time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The hidden state (B, d) at the mask token written after each history (the request time is not read)."""
        self.check_history(item_seq, item_seq_len, timestamps)
        masked_seq, masked_len = self.append_mask(item_seq, item_seq_len)
        return self.gather_last(self._encode(masked_seq, masked_len), masked_len)

    def cloze_mask(self, item_seq_len: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the masked positions of a training batch: (B,) lengths -> (masked, scored), both (B, L) bool.

        ``masked``: positions whose item is replaced by the mask token; ``scored``: the subset that
        carries a loss (at most ``mask_item_length`` per row, the most recent ones, never position 0).
        Drawn on the CPU from torch's global generator, whatever device the model is on.
        """
        item_seq_len = item_seq_len.cpu()
        positions = torch.arange(length)[None, :]
        real = positions < item_seq_len[:, None]
        if float(torch.rand(())) < self.ft_ratio:  # fine-tuning batch: mask the last item
            masked = positions == (item_seq_len[:, None] - 1)
        else:
            masked = real & (torch.rand(real.shape) < self.mask_ratio)
        masked_from_here = masked.flip(1).cumsum(1).flip(1)  # masked positions at or after t
        scored = masked & (masked_from_here <= self.mask_item_length) & (positions > 0)
        return masked, scored

    def prepare_training_batch(self, batch: Batch) -> Batch:
        """Draw the cloze masks: ``extras["cloze_masked"]`` (B, L) bool and ``target_index`` of the scored positions.
        A causal-regime window first takes its last target into the sequence (``cloze_last_target``)."""
        if batch.regime is CAUSAL and self.cloze_last_target and CLOZE_MASKED not in batch.extras:
            last = batch.target.gather(1, (batch.item_seq_len - 1).clamp(min=0)[:, None]).squeeze(1)
            item_seq, item_seq_len = self.append(batch.item_seq, batch.item_seq_len, last)
            batch = replace(batch, item_seq=item_seq, item_seq_len=item_seq_len)
        masked, scored = self.cloze_mask(batch.item_seq_len, batch.item_seq.shape[1])
        extras = {**batch.extras, CLOZE_MASKED: masked}
        return replace(batch, extras=extras, target_index=torch.nonzero(scored.reshape(-1)).squeeze(1))

    def target_states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloze / fine-tuning positions of the history (the module docstring has the rules)."""
        self.check_history(batch.item_seq, batch.item_seq_len, batch.timestamps)
        if CLOZE_MASKED not in batch.extras:
            batch = self.prepare_training_batch(batch)
        item_seq, index = batch.item_seq, batch.target_index
        masked_seq = item_seq.masked_fill(batch.extras[CLOZE_MASKED], self.mask_token)
        hidden = self._encode(masked_seq, batch.item_seq_len)
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, index), item_seq.reshape(-1)[index]
