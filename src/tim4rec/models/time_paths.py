"""TiM4Rec's time path, one small module per ``time_mode``, chosen once when the model is built.

A :class:`TimeMode` (``TIME_MODES[name]``) holds a mode's two classes and what the mode allows
(``causal``: the output at t depends only on events <= t, so the model trains in the causal
regime, runs at any length and streams); nothing downstream compares mode names.

Each mode has two parts with the same interface across modes:

- *features* (once per model): timestamps (B, L) -> the first layer's time input ``tau``;
  ``step_features(gaps)`` does the same for one event (streaming modes only);
- *layer path* (once per TiSSD layer): ``tau -> (u, tau')``, where ``u`` (B, L, H) multiplies the
  step size ``dt`` (None: no time path) and ``tau'`` is the next layer's time input;
  ``step(tau, state) -> (u, tau', state)`` for one event (streaming modes only).

Modes (the math is in :mod:`tim4rec.models.tim4rec`):

``paper``  the reference's computation; ``tau`` (B, H, L), its MLP, gate and LayerNorm act on the
           position axis (so it mixes positions and cannot stream);
``causal`` ``tau`` (B, L, H) from the gap since the previous event; MLP, gate and LayerNorm act on
           the head axis of each position; streams, and ``step`` runs the same code as ``forward``;
``none``   no time path (SSD4Rec*).

The parts' sub-modules keep the reference's names (``conv1d4time_1``, ``mlp4time_scale``, ...,
``layer_norm_time``); the owner registers them under those names directly
(:func:`~tim4rec.models.blocks.adopt_children`), so state-dict keys are the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.models.blocks import Dropout, causal_conv, causal_conv_step

SECONDS_PER_DAY = 86_400.0
Convolve = Callable[[nn.Conv1d, torch.Tensor, int], torch.Tensor]


# -- features: timestamps -> the first layer's tau ----------------------------------------------------------------
class NoTimeFeatures(nn.Module):
    """No time features (``tau`` is None). Every features class is built as ``cls(n_heads, max_seq_length, eps)``."""

    def __init__(self, n_heads: int, max_seq_length: int, eps: float):
        super().__init__()

    def forward(self, timestamps: torch.Tensor, dropout: nn.Module) -> None:
        return None

    def step_features(self, gaps: torch.Tensor, dropout: nn.Module) -> None:
        return None

    def initialize(self) -> None:
        pass


class PaperTimeFeatures(NoTimeFeatures):
    """``tau = LayerNorm_L(Dropout([0, t1-t0, t2-t1, ...]))`` over the padded float32 row, repeated over heads."""

    def __init__(self, n_heads: int, max_seq_length: int, eps: float):
        super().__init__(n_heads, max_seq_length, eps)
        self.n_heads = n_heads
        self.layer_norm_time = nn.LayerNorm(max_seq_length, eps=eps)

    def forward(self, timestamps: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        """(B, L) seconds -> (B, H, L)."""
        stamps = timestamps.float()  # the reference sees RecBole's float32 timestamps
        gaps = torch.cat([torch.zeros_like(stamps[:, :1]), stamps[:, 1:] - stamps[:, :-1]], dim=1)
        tau = self.layer_norm_time(dropout(gaps.to(self.layer_norm_time.weight.dtype)))  # LayerNorm over positions
        return tau[:, None, :].expand(-1, self.n_heads, -1)


class CausalTimeFeatures(NoTimeFeatures):
    """``tau_t = W log1p(max(t_t - t_{t-1}, 0))`` per head (``tau_0`` from a gap of 0), then dropout."""

    def __init__(self, n_heads: int, max_seq_length: int, eps: float):
        super().__init__(n_heads, max_seq_length, eps)
        self.time_encoder = nn.Linear(1, n_heads)  # log1p(gap in seconds) -> per-head feature

    def initialize(self) -> None:
        """A gap of one day maps to 1, a gap of 0 to 0 (after the model's generic initialisation)."""
        nn.init.constant_(self.time_encoder.weight, 1.0 / math.log1p(SECONDS_PER_DAY))
        nn.init.zeros_(self.time_encoder.bias)

    def forward(self, timestamps: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        """(B, L) seconds -> (B, L, H)."""
        gaps = (timestamps[:, 1:] - timestamps[:, :-1]).clamp(min=0)
        return self.step_features(torch.cat([torch.zeros_like(timestamps[:, :1]), gaps], dim=1), dropout)

    def step_features(self, gaps: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        """(...) int seconds >= 0 -> (..., H)."""
        log_gaps = torch.log1p(gaps.to(self.time_encoder.weight.dtype))
        return dropout(self.time_encoder(log_gaps[..., None]))


# -- layer paths: tau -> (u, tau') ---------------------------------------------------------------------------------
class NoTimePath(nn.Module):
    """No time path: ``u`` is None (dt is used as it is) and there is no next tau.

    Every layer path is built as ``cls(n_heads, max_seq_length, eps, d_conv, dropout, p2p_residual)``.
    """

    def __init__(self, n_heads: int, max_seq_length: int, eps: float, d_conv: int, dropout: float, p2p_residual: bool):
        super().__init__()

    def forward(self, tau: None) -> tuple[None, None]:
        return None, None

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        return {}

    def step(self, tau: None, state: dict[str, torch.Tensor]) -> tuple[None, None, dict[str, torch.Tensor]]:
        return None, None, {}


class _GatedTimePath(NoTimePath):
    """The reference's layer time path; ``features(n_heads, max_seq_length)`` is the axis its MLP, gate
    and LayerNorm act on."""

    def __init__(self, n_heads: int, max_seq_length: int, eps: float, d_conv: int, dropout: float, p2p_residual: bool):
        super().__init__(n_heads, max_seq_length, eps, d_conv, dropout, p2p_residual)
        h, features = n_heads, self.features(n_heads, max_seq_length)
        self.conv1d4time_1 = nn.Conv1d(h, h, d_conv, groups=h, padding=d_conv - 1)
        self.conv1d4time_2 = nn.Conv1d(h, h, d_conv, groups=h, padding=d_conv - 1)
        self.mlp4time_scale = nn.Sequential(
            Dropout(dropout), nn.Linear(features, features), nn.SiLU(), nn.Linear(features, features)
        )
        self.time_gate_residual = nn.Sequential(
            Dropout(dropout), nn.Linear(features, features if p2p_residual else 1), nn.Sigmoid()
        )
        self.time_layer_norm = nn.LayerNorm(features, eps=eps)

    def _scale(self, tau: torch.Tensor) -> torch.Tensor:
        return tau * self.mlp4time_scale(tau)

    def _convolve(self, u: torch.Tensor, convolve: Convolve) -> torch.Tensor:
        """Two causal Hardswish convolutions over positions; u (..., H) channels last."""
        u = F.hardswish(convolve(self.conv1d4time_1, u, 0))
        return F.hardswish(convolve(self.conv1d4time_2, u, 1))

    def _next_tau(self, tau: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        gate = self.time_gate_residual(tau)
        return self.time_layer_norm(gate * tau + (1 - gate) * u)


class PaperTimePath(_GatedTimePath):
    """tau (B, H, L): MLP, gate and LayerNorm over the position axis (length L)."""

    @staticmethod
    def features(n_heads: int, max_seq_length: int) -> int:
        return max_seq_length

    def forward(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = self._convolve(self._scale(tau).transpose(1, 2), lambda conv, x, _: causal_conv(conv, x))  # (B, L, H)
        return u, self._next_tau(tau, u.transpose(1, 2))

    def step(self, tau, state):
        raise RuntimeError("time_mode 'paper' mixes positions and cannot stream; use time_mode causal")


class CausalTimePath(_GatedTimePath):
    """tau (B, L, H): MLP, gate and LayerNorm over the heads of each position; convolutions over positions."""

    @staticmethod
    def features(n_heads: int, max_seq_length: int) -> int:
        return n_heads

    def _path(self, tau: torch.Tensor, convolve: Convolve) -> tuple[torch.Tensor, torch.Tensor]:
        u = self._convolve(self._scale(tau), convolve)
        return u, self._next_tau(tau, u)

    def forward(self, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._path(tau, lambda conv, x, _: causal_conv(conv, x))

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """The last K-1 inputs of each of the two convolutions."""
        channels, k = self.conv1d4time_1.in_channels, self.conv1d4time_1.kernel_size[0] - 1
        return {f"time_{i}": torch.zeros(batch_size, channels, k, device=device, dtype=dtype) for i in (1, 2)}

    def step(self, tau: torch.Tensor, state: dict[str, torch.Tensor]):
        """One event: tau (B, H) -> (u (B, H), tau' (B, H), state)."""
        new_state: dict[str, torch.Tensor] = {}

        def convolve(conv: nn.Conv1d, x: torch.Tensor, index: int) -> torch.Tensor:
            y, new_state[f"time_{index + 1}"] = causal_conv_step(conv, state[f"time_{index + 1}"], x)
            return y

        u, tau_next = self._path(tau, convolve)
        return u, tau_next, new_state


@dataclass(frozen=True)
class TimeMode:
    """A ``time_mode``: its features and layer-path classes, and whether it is causal (trains in the causal
    regime, runs at any length, streams) or mixes positions (``paper``: prefix regime, fixed length L)."""

    name: str
    features: type[NoTimeFeatures]
    path: type[NoTimePath]
    causal: bool


#: every time mode by its name (the value of the ``time_mode`` hyper-parameter)
TIME_MODES: dict[str, TimeMode] = {
    mode.name: mode
    for mode in (
        TimeMode("paper", PaperTimeFeatures, PaperTimePath, causal=False),
        TimeMode("causal", CausalTimeFeatures, CausalTimePath, causal=True),
        TimeMode("none", NoTimeFeatures, NoTimePath, causal=True),
    )
}
