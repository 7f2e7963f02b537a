"""Mamba4Rec: sequential recommendation with Mamba-1 selective state space layers.

Paper: C. Liu, J. Lin, J. Wang, H. Liu, J. Caverlee, "Mamba4Rec: Towards Efficient Sequential
Recommendation with Selective State Space Models", arXiv:2403.03900 (2024). Reference code:
github.com/chengkai-liu/Mamba4Rec (``mamba4rec.py``, RecBole + mamba-ssm's ``Mamba`` block).

Stack, in the reference's order (no position embedding: the recurrence orders the events):

    h = LayerNorm(Dropout(ItemEmb(s)))                                  (B, L, d)
    num_layers x MambaLayer:
        m = Mamba(h)
        h = LayerNorm(Dropout(m) + h)    (num_layers > 1; LayerNorm(Dropout(m)) with one layer)
        h = LayerNorm(h + Dropout(W2 Dropout(GELU(W1 h))))              (inner size 4d)
    scores = h[len - 1] @ ItemEmb^T

The Mamba block (mamba-ssm's ``Mamba``; ``d_inner = expand * d``, ``dt_rank = ceil(d / 16)``):

    x, z     = in_proj(h)                          Linear(d, 2 d_inner), no bias
    x        = SiLU(causal depthwise Conv1d(x))    kernel d_conv, with bias
    dt, B, C = x_proj(x)                           Linear(d_inner, dt_rank + 2 d_state), no bias
    Delta    = softplus(dt_proj(dt))               Linear(dt_rank, d_inner); its bias enters the softplus
    y        = SelectiveScan(x, Delta, A = -exp(A_log), B, C, D) * SiLU(z)
    out      = out_proj(y)                         Linear(d_inner, d), no bias

with ``h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t x_t`` and ``y_t = C_t . h_t + D x_t`` per channel
(:mod:`tim4rec.ops.selective_scan`). ``A_log = log(1..d_state)`` for every channel, ``D = 1``.

Initialisation (fidelity note): mamba-ssm gives ``dt_proj`` a uniform weight and a bias that is
softplus^-1 of a step size drawn log-uniformly in [1e-3, 0.1]. The reference then applies its
RecBole-style ``_init_weights`` to the whole model, which re-draws every Linear (dt_proj included)
and the embedding from N(0, 0.02), zeroes every Linear bias -- so the dt bias starts at 0 and every
step size at about softplus(0) = 0.69 -- and sets LayerNorms to (1, 0). We reproduce that effective
initialisation; the convolution keeps PyTorch's default init, A_log and D keep Mamba's.

Every operation is causal (causal convolution, forward recurrence, position-wise layers), so the
output at t depends only on events <= t: the model trains in the cheap causal regime and streams
(``init_state`` / ``step``, carrying per layer the convolution window and the (d_inner, d_state)
scan state). Timestamps are not used.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.data.batches import CAUSAL
from tim4rec.models.base import SequentialRecommender, StreamState
from tim4rec.models.blocks import Dropout, FeedForward, causal_conv, causal_conv_step, init_normal_
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.ops.selective_scan import selective_scan, selective_scan_step
from tim4rec.values import fraction, positive_int


@dataclasses.dataclass(frozen=True)
class Mamba4RecHyperparameters(Hyperparameters):
    hidden_size: int = hyperparameter(64, positive_int, size=True)
    num_layers: int = hyperparameter(2, positive_int, size=True)
    dropout_prob: float = hyperparameter(0.2, fraction)
    d_state: int = hyperparameter(32, positive_int, size=True)
    d_conv: int = hyperparameter(4, positive_int, size=True)
    expand: int = hyperparameter(2, positive_int, size=True)


class MambaBlock(nn.Module):
    """Mamba-1 mixer (mamba-ssm's ``Mamba`` with its defaults): (B, L, d) -> (B, L, d)."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int):
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state, self.d_conv = d_state, d_conv
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        # S4D-real initialisation: A[d, n] = -(n + 1) for every channel d
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(a_log)  # (d_inner, d_state)
        self.D = nn.Parameter(torch.ones(self.d_inner))  # (d_inner,)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def A(self) -> torch.Tensor:
        """(d_inner, d_state) negative decay rates, in at least float32."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (..., d_inner) after the convolution -> dt (..., d_inner) before bias and softplus, B, C (..., d_state)."""
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C  # the dt bias is added inside the scan

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, L, d_inner) each
        x = F.silu(causal_conv(self.conv1d, x))
        dt, B, C = self._ssm_inputs(x)
        y = selective_scan(
            x.transpose(1, 2),
            dt.transpose(1, 2),
            self.A(),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D=self.D,
            z=z.transpose(1, 2),
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
        )  # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, d)

    # -- streaming --------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        return {
            "conv": torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=dtype),
        }

    def step(
        self, hidden: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One event: hidden (B, d) -> (out (B, d), new state)."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, d_inner) each
        x, conv = causal_conv_step(self.conv1d, state["conv"], x)
        x = F.silu(x)
        dt, B, C = self._ssm_inputs(x)
        y, ssm = selective_scan_step(
            state["ssm"],
            x,
            dt,
            self.A(),
            B,
            C,
            D=self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
        )
        return self.out_proj(y), {"conv": conv, "ssm": ssm}


class MambaLayer(nn.Module):
    """Mamba block, dropout and a post-norm residual (none with a single layer), then the GELU FFN."""

    def __init__(self, hp: Mamba4RecHyperparameters):
        super().__init__()
        d_model, dropout = hp.hidden_size, hp.dropout_prob
        self.residual = hp.num_layers > 1
        self.mamba = MambaBlock(d_model, hp.d_state, hp.d_conv, hp.expand)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-12)
        self.ffn = FeedForward(d_model, 4 * d_model, dropout, "gelu", layer_norm_eps=1e-12, inner_dropout=dropout)

    def _after_mamba(self, out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        out = self.dropout(out)
        return self.ffn(self.layer_norm(out + hidden if self.residual else out))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, L, d)
        return self._after_mamba(self.mamba(hidden), hidden)

    def step(
        self, hidden: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out, state = self.mamba.step(hidden, state)  # (B, d)
        return self._after_mamba(out, hidden), state


class Mamba4Rec(SequentialRecommender):
    name = "mamba4rec"
    regime = CAUSAL
    causal = True
    streaming = True
    fixed_length = False  # a recurrence: any length
    Hyperparameters = Mamba4RecHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: Mamba4RecHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.item_embedding = nn.Embedding(n_items + 1, hp.hidden_size, padding_idx=0)
        self.layer_norm = nn.LayerNorm(hp.hidden_size, eps=1e-12)
        self.dropout = Dropout(hp.dropout_prob)
        self.mamba_layers = nn.ModuleList(MambaLayer(hp) for _ in range(hp.num_layers))
        self.apply(init_normal_)  # the reference's _init_weights: also re-draws dt_proj, zeroes its bias

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        self.check_history(item_seq, item_seq_len, timestamps)
        hidden = self.layer_norm(self.dropout(self.item_embedding(item_seq)))  # (B, L, d)
        for layer in self.mamba_layers:
            hidden = layer(hidden)
        return hidden  # (B, L, d)

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch_size: int) -> StreamState:
        """Empty streaming state for ``batch_size`` users: per layer a conv window and a scan state."""
        device = self.item_embedding.weight.device
        return StreamState.merge(
            **{f"layer{i}": layer.mamba.init_state(batch_size, device) for i, layer in enumerate(self.mamba_layers)}
        )

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user: item_ids, timestamps (B,) -> (hidden (B, d), state).

        Timestamps are accepted for the common streaming interface and not used.
        """
        self.check_events(item_ids, timestamps)
        hidden = self.layer_norm(self.dropout(self.item_embedding(item_ids)))  # (B, d)
        layers = {}
        for i, layer in enumerate(self.mamba_layers):
            hidden, layers[f"layer{i}"] = layer.step(hidden, state.part(f"layer{i}"))
        return hidden, StreamState.merge(**layers)
