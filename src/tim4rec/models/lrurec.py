"""LRURec (Yue et al., "Linear Recurrent Units for Sequential Recommendation", WSDM 2024).

Layout of the authors' code (github.com/yueqirex/LRURec, ``model/lru.py``):

``h = LayerNorm(Dropout(ItemEmb(s)))``, then ``n_layers`` blocks of

- an LRU layer: a complex diagonal linear recurrence over a state of N = 2 d complex channels,

      u_t = gamma * (B x_t + b)                       (B complex N x d, b complex)
      s_t = lambda * s_{t-1} + u_t,                   lambda = exp(-exp(nu_log) + i exp(theta_log))
      y_t = LayerNorm(x_t + Dropout_attn(Re(C s_t + c)))   (C complex d x N; D = identity)

  with ``gamma = exp(gamma_log)``, initialised to ``sqrt(1 - |lambda|^2)``, and lambda on the
  ring ``r_min <= |lambda| <= r_max`` with phase uniform in [0, 2 pi) ("ring initialisation");
- a position-wise GELU feed-forward (inner size 4 d) with a post-norm residual.

Scores are ``h[len-1] @ ItemEmb^T + item_bias`` (the authors' per-item output bias).

Differences from the authors' code, none of which changes the function class:

- complex weights are stored as real pairs: ``in_proj`` maps x to (Re, Im) of ``B x + b``,
  ``out_proj`` maps (Re s, Im s) to ``Re(C s + c)``; the recurrence runs in complex float32
  (complex float64 for a float64 model) through :func:`tim4rec.ops.lru_scan.lru_scan`;
- inputs are right-padded, so the recurrence over the real items is causal as it stands and
  no padding mask is needed (the original pads on the left and masks the carry);
- the model's sequences are not padded to a power of two (the scan works for any length).

The output at t depends only on events <= t: the model trains in the causal regime and streams
(``init_state`` / ``step``, one event per user). Timestamps are not used.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from tim4rec.data.batches import CAUSAL
from tim4rec.errors import ConfigError
from tim4rec.models.base import SequentialRecommender, StreamState
from tim4rec.models.blocks import Dropout, FeedForward
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.ops.lru_scan import lru_scan
from tim4rec.values import fraction, positive_int, positive_number, unit_interval

INIT_STD = 0.02  # the authors' truncated normal: N(0, 0.02) cut at +-2 std


def _recurrence_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype the recurrence runs in: float64 for float64 models, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclasses.dataclass(frozen=True)
class LRURecHyperparameters(Hyperparameters):
    hidden_size: int = hyperparameter(64, positive_int, size=True)
    n_layers: int = hyperparameter(2, positive_int, size=True)
    dropout_prob: float = hyperparameter(0.2, fraction)  # embedding and feed-forward (the authors' bert_dropout)
    attn_dropout_prob: float = hyperparameter(0.2, fraction)  # on the LRU output (the authors' bert_attn_dropout)
    r_min: float = hyperparameter(0.8, unit_interval)
    r_max: float = hyperparameter(0.99, unit_interval)
    layer_norm_eps: float = hyperparameter(1e-5, positive_number)  # PyTorch's default, as in the authors' code

    def check(self) -> None:
        if not self.r_min < self.r_max:
            raise ConfigError(f"need r_min < r_max, got r_min={self.r_min}, r_max={self.r_max}")


class LRULayer(nn.Module):
    """One linear recurrent unit with its residual and LayerNorm: (B, L, d) -> (B, L, d)."""

    def __init__(self, hidden_size: int, dropout: float, r_min: float, r_max: float, layer_norm_eps: float):
        super().__init__()
        self.state_size = n = 2 * hidden_size
        # ring initialisation: |lambda|^2 uniform in [r_min^2, r_max^2], phase uniform in [0, 2 pi)
        radius_sq = torch.rand(n) * (r_max**2 - r_min**2) + r_min**2
        self.nu_log = nn.Parameter(torch.log(-0.5 * torch.log(radius_sq)))  # |lambda| = exp(-exp(nu_log))
        self.theta_log = nn.Parameter(torch.log(2 * math.pi * torch.rand(n).clamp(min=1e-6)))  # phase exp(theta_log)
        self.gamma_log = nn.Parameter(0.5 * torch.log1p(-radius_sq))  # gamma = sqrt(1 - |lambda|^2)
        self.in_proj = nn.Linear(hidden_size, 2 * n)  # x -> (Re, Im) of B x + b
        self.out_proj = nn.Linear(2 * n, hidden_size)  # (Re s, Im s) -> Re(C s + c)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def lambdas(self, real_dtype: torch.dtype) -> torch.Tensor:
        """(N,) complex diagonal of the recurrence, ``exp(-exp(nu_log) + i exp(theta_log))``."""
        nu, theta = torch.exp(self.nu_log.to(real_dtype)), torch.exp(self.theta_log.to(real_dtype))
        return torch.exp(torch.complex(-nu, theta))

    def drive(self, x: torch.Tensor, real_dtype: torch.dtype) -> torch.Tensor:
        """Complex input u = gamma * (B x + b): x (..., d) -> (..., N)."""
        re, im = self.in_proj(x).to(real_dtype).chunk(2, dim=-1)
        return torch.complex(re, im) * torch.exp(self.gamma_log.to(real_dtype))

    def read(self, states: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm(x + Dropout(Re(C s + c))): states (..., N) complex, x (..., d) -> (..., d)."""
        out = self.out_proj(torch.cat([states.real, states.imag], dim=-1).to(x.dtype))
        return self.layer_norm(x + self.dropout(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real_dtype = _recurrence_dtype(x.dtype)
        states = lru_scan(self.lambdas(real_dtype), self.drive(x, real_dtype))  # (B, L, N) complex
        return self.read(states, x)

    def init_state(self, batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        complex_dtype = torch.complex128 if _recurrence_dtype(dtype) == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.state_size, device=device, dtype=complex_dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One event: x (B, d), state (B, N) complex -> (out (B, d), state)."""
        real_dtype = _recurrence_dtype(x.dtype)
        state = self.lambdas(real_dtype) * state + self.drive(x, real_dtype)
        return self.read(state, x), state


class LRUBlock(nn.Module):
    """LRU layer then the position-wise feed-forward (both post-norm residual)."""

    def __init__(self, hp: LRURecHyperparameters):
        super().__init__()
        d = hp.hidden_size
        self.lru = LRULayer(d, hp.attn_dropout_prob, hp.r_min, hp.r_max, hp.layer_norm_eps)
        self.feed_forward = FeedForward(
            d, 4 * d, hp.dropout_prob, "gelu", hp.layer_norm_eps, inner_dropout=hp.dropout_prob
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        return self.feed_forward(self.lru(x))

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, state = self.lru.step(x, state)
        return self.feed_forward(out), state


class LRURec(SequentialRecommender):
    name = "lrurec"
    regime = CAUSAL
    causal = True
    streaming = True
    fixed_length = False  # a recurrence: any length
    Hyperparameters = LRURecHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: LRURecHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.item_embedding = nn.Embedding(n_items + 1, hp.hidden_size, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(n_items + 1))
        self.dropout = Dropout(hp.dropout_prob)
        self.layer_norm = nn.LayerNorm(hp.hidden_size, eps=hp.layer_norm_eps)
        self.blocks = nn.ModuleList(LRUBlock(hp) for _ in range(hp.n_layers))
        self._init_weights()

    def _init_weights(self) -> None:
        """The authors' init: truncated N(0, 0.02) on every weight and bias except LayerNorms and lambda/gamma."""
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if "layer_norm" in name or name.rsplit(".", 1)[-1] in ("nu_log", "theta_log", "gamma_log"):
                    continue
                nn.init.trunc_normal_(parameter, mean=0.0, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Dot products with the item table plus the authors' per-item bias."""
        return self.item_embedding.weight, self.item_bias

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        self.check_history(item_seq, item_seq_len, timestamps)
        hidden = self.layer_norm(self.dropout(self.item_embedding(item_seq)))  # (B, L, d)
        for block in self.blocks:
            hidden = block(hidden)
        return hidden  # (B, L, d)

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch_size: int) -> StreamState:
        """Empty streaming state for ``batch_size`` users: one complex (B, N) state per layer."""
        weight = self.item_embedding.weight
        return StreamState(
            {
                f"layer{i}": block.lru.init_state(batch_size, weight.device, weight.dtype)
                for i, block in enumerate(self.blocks)
            }
        )

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user: item_ids, timestamps (B,) -> (hidden (B, d), state)."""
        self.check_events(item_ids, timestamps)
        hidden = self.layer_norm(self.dropout(self.item_embedding(item_ids)))  # (B, d)
        layers = {}
        for i, block in enumerate(self.blocks):
            hidden, layers[f"layer{i}"] = block.step(hidden, state[f"layer{i}"])
        return hidden, StreamState(layers)
