"""TiSASRec (Li, Wang & McAuley, WSDM 2020): self-attention aware of time intervals.

Layer layout of the RecBole-style port the TiM4Rec reference uses (hyper-parameter names as in
its YAML): ``h0 = Dropout(LayerNorm(ItemEmb(s)))``, then ``n_layers`` blocks of time-aware
causal multi-head self-attention and a feed-forward, each with a post-norm residual. Absolute
positions and relative time intervals enter the keys and values, not the input:

    e_ij = q_i . (k_j + P^K_j + R^K[r_ij]) / sqrt(d_head),      a_i = softmax_{j <= i}(e_i)
    z_i  = sum_j a_ij (v_j + P^V_j + R^V[r_ij])

(per head; ``P^K, P^V`` are position tables of ``max_seq_length`` rows, ``R^K, R^V`` interval
tables of ``time_span + 1`` rows), then ``LayerNorm(x + Dropout(W_o z))``.

Time intervals ``r_ij`` (``time_interval_mode``):

``scaled`` (default, the paper's)
    ``r_ij = min(floor(|t_i - t_j| / s), time_span)`` with s the user's smallest non-zero gap
    between consecutive events. Taking s over the whole window would let a later, shorter gap
    change the intervals seen at earlier positions (the output at t would depend on events
    after t, and on padding). So s is taken **per query position**: ``s_i`` is the smallest
    non-zero gap among events ``0..i`` (a running minimum; 1 while there is none, when every
    interval is 0 anyway). Row i of ``r`` then depends only on ``t_0..t_i``, and at the read-out
    position of a prefix ``s_i`` is exactly the paper's scale over the visible history.
``raw_seconds``
    ``r_ij = min(|t_i - t_j|, time_span)`` in seconds, the TiM4Rec reference's variant: with
    ``time_span`` 256 nearly every pair falls in the last bucket.

Memory: the (B, L, L, d) tensors ``R^K[r]`` and ``R^V[r]`` (2.6 GB each at L = 200, B = 256) are
never built. The interval table has only ``time_span + 1`` rows, so

    q_i . R^K[r_ij]          = (q_i R^K^T)[r_ij]                 a gather from (B, h, L, S+1)
    sum_j a_ij R^V[r_ij]     = sum_b (sum_{j: r_ij = b} a_ij) R^V_b
                             = (scatter_add of a into (B, h, L, S+1) buckets) @ R^V

with S = ``time_span``; the largest temporaries are (B, h, L, L) like plain attention.

Dropout on the embedding tables: the port drops elements of the gathered (B, L, d) position and
(B, L, L, d) interval embeddings. Here the position embeddings are dropped per user as there; the
interval tables are dropped per user as (B, S+1, d) tables (one mask per user and bucket rather
than per pair), the closest match that keeps the memory bound.

The output at t depends only on events <= t, so the model trains in the causal regime.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from tim4rec.data.batches import CAUSAL
from tim4rec.errors import ConfigError
from tim4rec.models.base import SequentialRecommender, StreamState, require
from tim4rec.models.blocks import AttentionBlock, AttentionHyperparameters, Dropout, RequestGap, init_normal_
from tim4rec.models.hyperparameters import hyperparameter
from tim4rec.values import boolean, choice, int_in, positive_int

_NO_GAP = torch.iinfo(torch.int64).max


def running_min_gap(timestamps: torch.Tensor) -> torch.Tensor:
    """(B, L) seconds -> (B, L) smallest non-zero gap ``|t_k - t_{k-1}|`` over ``k <= i`` (1 if none)."""
    stamps = timestamps.long()
    gaps = (stamps[:, 1:] - stamps[:, :-1]).abs()
    gaps = torch.where(gaps > 0, gaps, torch.full_like(gaps, _NO_GAP))
    gaps = torch.cat([torch.full_like(stamps[:, :1], _NO_GAP), gaps], dim=1)  # position 0 has no gap
    scale = gaps.cummin(dim=1).values
    return torch.where(scale == _NO_GAP, torch.ones_like(scale), scale)


#: time_interval_mode -> how |t_i - t_j| (seconds) becomes a bucket before the clamp: divided by the query's scale
_RESCALE = {
    "scaled": lambda distance, scale: torch.div(distance, scale, rounding_mode="floor"),
    "raw_seconds": lambda distance, scale: distance,
}
TIME_INTERVAL_MODES = tuple(_RESCALE)


def interval_buckets(distance: torch.Tensor, scale: torch.Tensor, time_span: int, mode: str) -> torch.Tensor:
    """|t_i - t_j| in seconds -> buckets in [0, time_span]: divided by the query's ``scale`` (``scaled``) or not."""
    if mode not in _RESCALE:
        raise ConfigError(f"time_interval_mode: expected one of {TIME_INTERVAL_MODES}, got {mode!r}")
    return _RESCALE[mode](distance, scale).clamp(max=time_span)


def time_intervals(timestamps: torch.Tensor, time_span: int, mode: str = "scaled") -> torch.Tensor:
    """(B, L) seconds -> (B, L, L) long buckets ``r_ij`` in [0, time_span]; row i uses only t_0..t_i (and t_j)."""
    stamps = timestamps.long()
    distance = (stamps[:, :, None] - stamps[:, None, :]).abs()  # |t_i - t_j|
    return interval_buckets(distance, running_min_gap(stamps)[:, :, None], time_span, mode)


@dataclasses.dataclass(frozen=True)
class TiSASRecHyperparameters(AttentionHyperparameters):
    n_heads: int = hyperparameter(4, positive_int, size=True)
    # the interval tables have time_span + 1 rows of hidden_size each: real settings use hundreds to
    # thousands of buckets (256 in the packaged configs); 2**20 (12 days of unscaled seconds) still fits
    # in 512 MiB at hidden_size 64, while an unbounded value asks the allocator for terabytes
    time_span: int = hyperparameter(256, int_in(1, 2**20), size=True)
    time_interval_mode: str = hyperparameter("scaled", choice(*TIME_INTERVAL_MODES))
    #: the read-out also takes the gap from the last event to the time the prediction is for (the target's
    #: time in training and evaluation, the request's when serving), as TiM4Rec's: the intervals between
    #: events reach the attention, this one only the read-out
    request_time: bool = hyperparameter(False, boolean)


class TimeAwareSelfAttention(nn.Module):
    """Causal multi-head attention with position and interval terms in keys and values (post-norm)."""

    def __init__(self, hidden_size: int, n_heads: int, attn_dropout: float, dropout: float, layer_norm_eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.head_size = hidden_size // n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = Dropout(attn_dropout)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, n, d) -> (B, heads, n, d / heads)
        return x.reshape(*x.shape[:-1], self.n_heads, self.head_size).transpose(-3, -2)

    def _attend(
        self,
        x: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        buckets: torch.Tensor,
        future: torch.Tensor,
        interval_key: torch.Tensor,
        interval_value: torch.Tensor,
    ) -> torch.Tensor:
        """Queries q (B, h, n, dh) of the rows x (B, n, d) over keys and values (B, h, L, dh) that
        already hold the position terms; buckets (B, h, n, L) in [0, S]; ``future`` (..., n, L) True
        where a key is after its query. Returns LayerNorm(x + Dropout(W_o z)), (B, n, d)."""
        r_key, r_value = self._heads(interval_key), self._heads(interval_value)  # (B or 1, h, S+1, dh)
        logits = q @ k.transpose(-1, -2) + (q @ r_key.transpose(-1, -2)).gather(-1, buckets)  # (B, h, n, L)
        logits = (logits / math.sqrt(self.head_size)).masked_fill(future, float("-inf"))
        weights = self.attn_dropout(torch.softmax(logits, dim=-1))  # exactly 0 at j > i
        per_bucket = torch.zeros(*weights.shape[:-1], r_value.shape[-2], dtype=weights.dtype, device=x.device)
        per_bucket = per_bucket.scatter_add(-1, buckets, weights)  # (B, h, n, S+1): sum_{j: r_ij = b} a_ij
        attended = weights @ v + per_bucket @ r_value  # (B, h, n, dh)
        merged = attended.transpose(1, 2).reshape(x.shape)
        return self.layer_norm(x + self.dropout(self.out(merged)))

    def forward(
        self,
        x: torch.Tensor,
        intervals: torch.Tensor,
        pos_key: torch.Tensor,
        pos_value: torch.Tensor,
        interval_key: torch.Tensor,
        interval_value: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, L, d); intervals (B, L, L) long in [0, S]; pos_* (B or 1, L, d); interval_* (B or 1, S+1, d).

        Returns (B, L, d).
        """
        b, l, _ = x.shape
        q = self._heads(self.query(x))  # (B, h, L, dh)
        k = self._heads(self.key(x)) + self._heads(pos_key)
        v = self._heads(self.value(x)) + self._heads(pos_value)
        buckets = intervals[:, None].expand(b, self.n_heads, l, l)  # (B, h, L, L)
        future = torch.ones(l, l, dtype=torch.bool, device=x.device).triu(1)
        return self._attend(x, q, k, v, buckets, future, interval_key, interval_value)

    def step(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        position: torch.Tensor,
        intervals: torch.Tensor,
        pos_key: torch.Tensor,
        pos_value: torch.Tensor,
        interval_key: torch.Tensor,
        interval_value: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One event x (B, d) at ``position`` (B,) with a cache of keys and values (B, h, L, dh)
        (position terms included); intervals (B, L): its buckets to every cached position; pos_*
        (B, d) of this position. Returns (out (B, d), keys, values) with this event written in."""
        rows = x[:, None, :]  # (B, 1, d)
        length = keys.shape[2]
        slots = torch.arange(length, device=x.device)
        here = (slots == position[:, None])[:, None, :, None]  # (B, 1, L, 1)
        keys = torch.where(here, self._heads(self.key(rows)) + self._heads(pos_key[:, None]), keys)
        values = torch.where(here, self._heads(self.value(rows)) + self._heads(pos_value[:, None]), values)
        buckets = intervals[:, None, None, :].expand(-1, self.n_heads, 1, length)  # (B, h, 1, L)
        future = (slots > position[:, None])[:, None, None, :]  # (B, 1, 1, L)
        q = self._heads(self.query(rows))  # (B, h, 1, dh)
        out = self._attend(rows, q, keys, values, buckets, future, interval_key, interval_value)
        return out[:, 0], keys, values


class TiSASRec(SequentialRecommender):
    name = "tisasrec"
    regime = CAUSAL
    causal = True
    streaming = True
    Hyperparameters = TiSASRecHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: TiSASRecHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.time_span = hp.time_span
        self.time_interval_mode = hp.time_interval_mode
        self.item_embedding = nn.Embedding(n_items + 1, hp.hidden_size, padding_idx=0)
        self.position_key_embedding = nn.Embedding(max_seq_length, hp.hidden_size)
        self.position_value_embedding = nn.Embedding(max_seq_length, hp.hidden_size)
        self.interval_key_embedding = nn.Embedding(self.time_span + 1, hp.hidden_size)
        self.interval_value_embedding = nn.Embedding(self.time_span + 1, hp.hidden_size)
        self.layer_norm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
        self.dropout = Dropout(hp.hidden_dropout_prob)
        self.blocks = nn.ModuleList(
            AttentionBlock(hp, attention=TimeAwareSelfAttention(
                hp.hidden_size, hp.n_heads, hp.attn_dropout_prob, hp.hidden_dropout_prob, hp.layer_norm_eps
            ))
            for _ in range(hp.n_layers)
        )  # fmt: skip
        self.apply(lambda module: init_normal_(module, hp.initializer_range))
        if hp.request_time:  # after the initialisation: its output layer starts at zero
            self.request_gap = RequestGap(hp.hidden_size)

    def time_intervals(self, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, L) seconds -> (B, L, L) interval buckets in [0, time_span] (see the module docstring)."""
        return time_intervals(timestamps, self.time_span, self.time_interval_mode)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        self.check_history(item_seq, item_seq_len, timestamps)
        b, l = item_seq.shape
        intervals = self.time_intervals(timestamps)  # (B, L, L)
        positions = torch.arange(l, device=item_seq.device)

        def per_user(table: torch.Tensor) -> torch.Tensor:  # (n, d) -> (B, n, d), dropped out per user
            return self.dropout(table.unsqueeze(0).expand(b, -1, -1))

        time_and_position = (
            per_user(self.position_key_embedding(positions)),
            per_user(self.position_value_embedding(positions)),
            per_user(self.interval_key_embedding.weight),
            per_user(self.interval_value_embedding.weight),
        )
        hidden = self.dropout(self.layer_norm(self.item_embedding(item_seq)))  # (B, L, d)
        for block in self.blocks:
            hidden = block(hidden, intervals, *time_and_position)
        return hidden  # (B, L, d)

    # -- streaming: a key/value cache per block, and the timestamps seen ------------------------
    def init_state(self, batch_size: int) -> StreamState:
        """Empty state: per block keys and values (B, h, L, dh) with their position terms; the
        timestamps ``times`` (B, L); ``length``, ``last_time`` and the running ``min_gap`` (B,)."""
        like = self.item_embedding.weight
        heads = self.blocks[0].attention.n_heads
        size = (batch_size, heads, self.max_seq_length, like.shape[1] // heads)
        caches = {
            f"block{i}": {"keys": like.new_zeros(size), "values": like.new_zeros(size)} for i in range(len(self.blocks))
        }
        counts = torch.zeros(batch_size, dtype=torch.long, device=like.device)
        return StreamState.merge(
            length=counts, last_time=counts, min_gap=torch.full_like(counts, _NO_GAP),
            times=counts.new_zeros(batch_size, self.max_seq_length), **caches,
        )  # fmt: skip

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user: item_ids, timestamps (B,) -> (hidden (B, d), state).

        O(L d) per block and event; at most ``max_seq_length`` events per state (the position
        tables' size): longer histories are recomputed from their most recent events.
        """
        self.check_events(item_ids, timestamps)
        position, timestamps = state["length"], timestamps.long()
        require(
            position < self.max_seq_length,
            f"a streaming state holds at most max_seq_length = {self.max_seq_length} events; "
            "recompute longer histories from their most recent events",
        )
        gap = (timestamps - state["last_time"]).abs()
        new_gap = (position > 0) & (gap > 0)
        min_gap = torch.where(new_gap, torch.minimum(state["min_gap"], gap), state["min_gap"])
        scale = torch.where(min_gap == _NO_GAP, torch.ones_like(min_gap), min_gap)
        slots = torch.arange(self.max_seq_length, device=position.device)
        times = torch.where(slots == position[:, None], timestamps[:, None], state["times"])
        distance = (timestamps[:, None] - times).abs()  # (B, L)
        intervals = interval_buckets(distance, scale[:, None], self.time_span, self.time_interval_mode)
        position_terms = (
            self.dropout(self.position_key_embedding(position)),
            self.dropout(self.position_value_embedding(position)),
            self.dropout(self.interval_key_embedding.weight[None]),
            self.dropout(self.interval_value_embedding.weight[None]),
        )
        hidden = self.dropout(self.layer_norm(self.item_embedding(item_ids)))  # (B, d)
        caches = {}
        for i, block in enumerate(self.blocks):
            cache = state.part(f"block{i}")
            hidden, keys, values = block.step(
                hidden, cache["keys"], cache["values"], position, intervals, *position_terms
            )
            caches[f"block{i}"] = {"keys": keys, "values": values}
        new_state = StreamState.merge(length=position + 1, last_time=timestamps, min_gap=min_gap, times=times, **caches)
        return hidden, new_state
