"""TiM4Rec (Fan et al., arXiv 2409.16182): a time-aware Mamba-2 (SSD) sequential recommender.

Stack: ``h = LayerNorm(Dropout(ItemEmb(s)))``, then ``num_layers`` TiSSD layers, each
``h = LayerNorm(Dropout(TiSSD(h, tau)) + h)`` (no residual with one layer) followed by a
Hardswish feed-forward; scores are ``h[len-1] @ ItemEmb^T``.

TiSSD is a Mamba-2 block: ``in_proj`` -> (z, xBC, dt); ``xBC = Hardswish(causal depthwise
conv(xBC))`` -> (x, B, C); the SSD recurrence ``S_t = exp(Delta_t A) S_{t-1} + Delta_t x_t
B_t^T``, ``y_t = S_t C_t + D x_t`` with ``Delta_t = softplus(dt_t * u_t + dt_bias)``; then
``out_proj(RMSNorm(y * SiLU(z)))``. The time path produces ``u`` (B, L, H) from the gaps
between interactions, so the state decays by an amount that depends on elapsed time. Three
``time_mode`` values:

``paper``
    The reference computation, quirks included (see ``docs/reference.md``): gaps
    ``[0, t1-t0, ...]`` over the padded float32 timestamp row (so position ``len`` holds
    ``0 - t_{len-1}``), a LayerNorm over the *position* axis (length L), position-axis Linear
    layers in the time MLP and gate, two causal Hardswish convolutions, and the gated residual
    ``tau' = LayerNorm_L(g tau + (1-g) u)`` passed to the next layer. Module names match the
    reference, so its state_dict loads with ``strict=True``. The position-axis layers mix
    positions (and padding) and fix L, so this mode trains only in the prefix regime.

``causal`` (ours)
    The same time-aware SSD with every time feature a function of the gap since the previous
    event only: ``tau_t = W log1p(max(t_t - t_{t-1}, 0))`` per head (``tau_0`` from a gap of 0);
    the time MLP and gate act on the head axis of each position instead of the position axis; the
    two causal convolutions are kept; the next layer gets ``g tau + (1-g) u`` normalised over
    heads. Nothing looks at later positions or at padding, so the output at t depends only on
    events <= t: the model trains in the cheap causal regime, runs at any length and streams
    (``init_state`` / ``step``).

``none``
    The time path off (``u = 1``): SSD4Rec*, registered also as ``ssd4rec``. Causal.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.data.batches import CAUSAL, PREFIX
from tim4rec.errors import ConfigError
from tim4rec.models.base import SequentialRecommender, StreamState
from tim4rec.models.blocks import Dropout, FeedForward, RequestGap, adopt_children, causal_conv, causal_conv_step
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.models.time_paths import TIME_MODES, NoTimeFeatures, NoTimePath, TimeMode
from tim4rec.ops import ssd_readout, ssd_scan, ssd_step
from tim4rec.ops.compile import compiled
from tim4rec.values import boolean, choice, fraction, optional, positive_int, positive_number


@dataclasses.dataclass(frozen=True)
class TiM4RecHyperparameters(Hyperparameters):
    """The reference's hyper-parameters (its YAML names and defaults)."""

    hidden_size: int = hyperparameter(64, positive_int, size=True)
    num_layers: int = hyperparameter(2, positive_int, size=True)
    dropout_prob: float = hyperparameter(0.2, fraction)
    time_drop_out: float = hyperparameter(0.2, fraction)
    d_state: int = hyperparameter(32, positive_int, size=True)
    d_conv: int = hyperparameter(4, positive_int, size=True)
    expand: int = hyperparameter(2, positive_int, size=True)
    head_dim: int = hyperparameter(32, positive_int, size=True)
    chunk_size: int = hyperparameter(32, positive_int, size=True)
    is_ffn: bool = hyperparameter(True, boolean)
    inner_size: int | None = hyperparameter(None, optional(positive_int), size=True)  # None: 4 * hidden_size
    p2p_residual: bool = hyperparameter(False, boolean)
    norm_eps: float = hyperparameter(1e-12, positive_number)
    is_kai_ming_init: bool = hyperparameter(True, boolean)
    time_mode: str = hyperparameter("causal", choice(*TIME_MODES))
    #: the read-out also takes the gap from the last event to the time the prediction is for (the target's
    #: time in training and evaluation, the request's when serving): :class:`~tim4rec.models.blocks.RequestGap`
    request_time: bool = hyperparameter(False, boolean)

    def check(self) -> None:
        d_inner = self.expand * self.hidden_size
        if d_inner % self.head_dim:
            raise ConfigError(f"hidden_size * expand = {d_inner} is not a multiple of head_dim {self.head_dim}")

    @property
    def mode(self) -> TimeMode:
        """The time mode (:mod:`tim4rec.models.time_paths`), chosen here by its name."""
        return TIME_MODES[self.time_mode]

    @property
    def n_heads(self) -> int:
        return self.expand * self.hidden_size // self.head_dim


@dataclasses.dataclass(frozen=True)
class SSD4RecHyperparameters(TiM4RecHyperparameters):
    """SSD4Rec*: the time path off and PyTorch's convolution initialisation."""

    is_kai_ming_init: bool = hyperparameter(False, boolean)
    time_mode: str = hyperparameter("none", choice(*TIME_MODES))


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y * SiLU(z)) * weight`` over the last axis (mamba-ssm's gated norm, gate first)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.eps)


@compiled
def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``RMSNorm(y * SiLU(z)) * weight`` over the last axis, computed in at least float32."""
    gated = (y * F.silu(z)).to(torch.promote_types(y.dtype, torch.float32))
    normed = gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * weight).to(y.dtype)


class TiSSD(nn.Module):
    """One time-aware Mamba-2 block. ``forward(u (B, L, d), tau) -> (out (B, L, d), tau')``.

    ``time_path`` (one module per time mode, :mod:`tim4rec.models.time_paths`) turns ``tau`` into
    the factor ``u`` of the step size and the next layer's ``tau``; its sub-modules are registered
    on this block under the reference's names.
    """

    def __init__(self, hp: TiM4RecHyperparameters, max_seq_length: int):
        super().__init__()
        d_model, d_state, d_conv = hp.hidden_size, hp.d_state, hp.d_conv
        self.d_inner = hp.expand * d_model
        self.n_heads = h = hp.n_heads
        self.head_dim, self.d_state, self.d_conv, self.chunk_size = hp.head_dim, d_state, d_conv, hp.chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * d_state + h)  # -> z, xBC, dt
        conv_dim = self.d_inner + 2 * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv - 1)
        self.act = nn.Hardswish()
        path = hp.mode.path(h, max_seq_length, hp.norm_eps, d_conv, hp.time_drop_out, hp.p2p_residual)
        self.time_path: NoTimePath = adopt_children(self, path)
        # Mamba-2 initialisation: dt log-uniform in [1e-3, 1e-1] (floor 1e-4) through softplus^-1, A ~ U(1, 16)
        dt = torch.exp(torch.rand(h) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(h))
        self.norm = GatedRMSNorm(self.d_inner, hp.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "time_path":  # a plain attribute: its sub-modules are registered on this block
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def A(self) -> torch.Tensor:
        """(H,) the negative decay rates, in at least float32."""
        return -torch.exp(self.A_log.to(torch.promote_types(self.A_log.dtype, torch.float32)))

    def _project(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """in_proj as three products with its row blocks: (..., d) -> z (..., d_in), xBC (..., d_in + 2N), dt (..., H).

        Same numbers as splitting ``in_proj(hidden)``; the backward then needs no concatenation of
        the three (B, L, .) gradients (about 5% of a training step at L = 3200 on a CPU).
        """
        return [F.linear(hidden, w, b) for w, b in self._in_blocks()]

    def _in_blocks(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """in_proj's (weight, bias) row blocks for z, xBC and dt."""
        sizes = [self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads]
        return list(zip(self.in_proj.weight.split(sizes), self.in_proj.bias.split(sizes)))

    def _split(self, xBC: torch.Tensor) -> list[torch.Tensor]:
        """(..., d_in + 2N) after the convolution -> x (..., d_in), B (..., N), C (..., N)."""
        return torch.split(self.act(xBC), [self.d_inner, self.d_state, self.d_state], dim=-1)

    def _output(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """out_proj(RMSNorm(y * SiLU(z))): y (..., H, P), z (..., d_in) -> (..., d)."""
        return self.out_proj(self.norm(y.reshape(*z.shape), z))

    def forward(self, hidden: torch.Tensor, tau: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, l, _ = hidden.shape
        z, xBC, dt = self._project(hidden)  # (B, L, d_in), (B, L, d_in + 2N), (B, L, H)
        x, B, C = self._split(causal_conv(self.conv1d, xBC))
        u, tau_next = self.time_path(tau)
        if u is not None:
            dt = dt * u
        y = ssd_scan(
            x.reshape(b, l, self.n_heads, self.head_dim), dt, self.A(), B[:, :, None, :], C[:, :, None, :],
            self.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
        )  # (B, L, H, P)  # fmt: skip
        return self._output(y, z), tau_next

    def readout(self, hidden: torch.Tensor, tau: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        """``forward``'s output at one position per sequence: hidden (B, L, d), positions (B,) -> (B, d).

        Everything that feeds the state runs over all positions; the gate, norm and output
        projection run at the position only, and the scan computes no outputs but that one
        (:func:`~tim4rec.ops.ssd.ssd_readout`).
        """
        b, l, _ = hidden.shape
        (w_z, b_z), (w_xBC, b_xBC), (w_dt, b_dt) = self._in_blocks()
        x, B, C = self._split(causal_conv(self.conv1d, F.linear(hidden, w_xBC, b_xBC)))
        dt = F.linear(hidden, w_dt, b_dt)  # (B, L, H)
        u, _ = self.time_path(tau)
        if u is not None:
            dt = dt * u
        y = ssd_readout(
            x.reshape(b, l, self.n_heads, self.head_dim), dt, self.A(), B[:, :, None, :], C[:, :, None, :],
            self.chunk_size, positions, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
        )  # (B, H, P)  # fmt: skip
        z = F.linear(hidden[torch.arange(b, device=hidden.device), positions], w_z, b_z)  # (B, d_in)
        return self._output(y, z)

    # -- streaming (causal and none modes) -----------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
        """The convolution's last K-1 inputs, the SSD state (B, H, P, N), and the time path's windows."""
        return {
            "conv": torch.zeros(
                batch_size, self.d_inner + 2 * self.d_state, self.d_conv - 1, device=device, dtype=dtype
            ),
            "ssm": torch.zeros(batch_size, self.n_heads, self.head_dim, self.d_state, device=device, dtype=dtype),
            **self.time_path.init_state(batch_size, device, dtype),
        }

    def step(self, hidden: torch.Tensor, tau: torch.Tensor | None, state: dict[str, torch.Tensor]):
        """One event: hidden (B, d), tau (B, H) or None -> (out (B, d), tau' (B, H) or None, state)."""
        z, xBC, dt = self._project(hidden)
        xBC, conv = causal_conv_step(self.conv1d, state["conv"], xBC)
        x, B, C = self._split(xBC)
        u, tau_next, time_state = self.time_path.step(tau, state)
        if u is not None:
            dt = dt * u
        y, ssm = ssd_step(
            state["ssm"], x.reshape(-1, self.n_heads, self.head_dim), dt, self.A(), B[:, None, :], C[:, None, :],
            D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
        )  # fmt: skip
        return self._output(y, z), tau_next, {"conv": conv, "ssm": ssm, **time_state}


class TiSSDLayer(nn.Module):
    """TiSSD, dropout and a post-norm residual (none with a single layer), then the FFN."""

    def __init__(self, hp: TiM4RecHyperparameters, max_seq_length: int):
        super().__init__()
        d_model, dropout = hp.hidden_size, hp.dropout_prob
        self.residual = hp.num_layers > 1
        self.ssd = TiSSD(hp, max_seq_length)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model, eps=hp.norm_eps)
        # the reference's FFN LayerNorm eps is 1e-12 whatever norm_eps says
        inner = hp.inner_size or 4 * d_model
        self.ffn = (
            FeedForward(d_model, inner, dropout, "hardswish", layer_norm_eps=1e-12, inner_dropout=dropout)
            if hp.is_ffn
            else None
        )

    def _after_ssd(self, out: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        out = self.layer_norm(self.dropout(out) + hidden if self.residual else self.dropout(out))
        return self.ffn(out) if self.ffn is not None else out

    def forward(self, hidden: torch.Tensor, tau: torch.Tensor | None):
        out, tau = self.ssd(hidden, tau)
        return self._after_ssd(out, hidden), tau

    def readout(self, hidden: torch.Tensor, tau: torch.Tensor | None, positions: torch.Tensor) -> torch.Tensor:
        """The layer's output (B, d) at one position per sequence (positions (B,))."""
        out = self.ssd.readout(hidden, tau, positions)
        return self._after_ssd(out, hidden[torch.arange(hidden.shape[0], device=hidden.device), positions])

    def step(self, hidden: torch.Tensor, tau: torch.Tensor | None, state: dict[str, torch.Tensor]):
        out, tau, state = self.ssd.step(hidden, tau, state)
        return self._after_ssd(out, hidden), tau, state


class TiM4Rec(SequentialRecommender):
    name = "tim4rec"
    Hyperparameters = TiM4RecHyperparameters

    @classmethod
    def translate_config(cls, layer: dict[str, Any], notices: list[str]) -> dict[str, Any]:
        """The reference YAML's ``is_time: True/False`` means ``time_mode: paper/none``."""
        if "is_time" in layer:
            is_time = layer.pop("is_time")
            if "time_mode" not in layer:
                layer["time_mode"] = "paper" if is_time else "none"
                notices.append(f"is_time: {is_time} read as time_mode: {layer['time_mode']}")
        return layer

    def __init__(self, n_items: int, max_seq_length: int, hp: TiM4RecHyperparameters):
        super().__init__(n_items, max_seq_length)
        self.time_mode = hp.mode
        self.causal = self.streaming = hp.mode.causal
        self.fixed_length = not hp.mode.causal  # position-axis layers fix L; causal modes run at any length
        self.regime = CAUSAL if hp.mode.causal else PREFIX
        self.is_kai_ming_init = hp.is_kai_ming_init
        self.item_embedding = nn.Embedding(n_items + 1, hp.hidden_size, padding_idx=0)
        self.in_layer_norm = nn.LayerNorm(hp.hidden_size, eps=hp.norm_eps)
        self.n_heads = hp.n_heads
        features = hp.mode.features(hp.n_heads, max_seq_length, hp.norm_eps)
        self.time_features: NoTimeFeatures = adopt_children(self, features)  # layer_norm_time / time_encoder
        self.dropout = Dropout(hp.dropout_prob)
        self.ssd_layers = nn.ModuleList(TiSSDLayer(hp, max_seq_length) for _ in range(hp.num_layers))
        self.apply(self._init_weights)
        self.time_features.initialize()
        if hp.request_time:
            self.request_gap = RequestGap(hp.hidden_size)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "time_features":  # a plain attribute: its sub-modules are registered on the model
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.Conv1d) and self.is_kai_ming_init:
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        self.check_history(item_seq, item_seq_len, timestamps)
        hidden = self.in_layer_norm(self.dropout(self.item_embedding(item_seq)))  # (B, L, d)
        tau = self.time_features(timestamps, self.dropout)
        for layer in self.ssd_layers:
            hidden, tau = layer(hidden, tau)
        return hidden

    def readout(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """As ``forward`` at position len - 1, but the last layer computes only that position's output."""
        hidden = self.in_layer_norm(self.dropout(self.item_embedding(item_seq)))  # (B, L, d)
        tau = self.time_features(timestamps, self.dropout)
        for layer in self.ssd_layers[:-1]:
            hidden, tau = layer(hidden, tau)
        return self.ssd_layers[-1].readout(hidden, tau, (item_seq_len - 1).clamp(min=0))  # (B, d)

    # -- streaming ---------------------------------------------------------------------------
    def init_state(self, batch_size: int) -> StreamState:
        """Empty streaming state for ``batch_size`` users (causal and none modes)."""
        if not self.streaming:
            raise RuntimeError("time_mode 'paper' cannot stream: its time path mixes positions")
        device = self.item_embedding.weight.device
        return StreamState.merge(
            last_time=torch.zeros(batch_size, dtype=torch.long, device=device),
            seen=torch.zeros(batch_size, dtype=torch.bool, device=device),
            **{f"layer{i}": layer.ssd.init_state(batch_size, device) for i, layer in enumerate(self.ssd_layers)},
        )

    def step_hidden(
        self, state: StreamState, item_ids: torch.Tensor, timestamps: torch.Tensor
    ) -> tuple[torch.Tensor, StreamState]:
        """Feed one event per user: item_ids, timestamps (B,) -> (hidden (B, d), state)."""
        self.check_events(item_ids, timestamps)
        hidden = self.in_layer_norm(self.dropout(self.item_embedding(item_ids)))  # (B, d)
        gaps = torch.where(state["seen"], (timestamps - state["last_time"]).clamp(min=0), torch.zeros_like(timestamps))
        tau = self.time_features.step_features(gaps, self.dropout)
        layers = {}
        for i, layer in enumerate(self.ssd_layers):
            hidden, tau, layers[f"layer{i}"] = layer.step(hidden, tau, state.part(f"layer{i}"))
        new_state = StreamState.merge(last_time=timestamps.clone(), seen=torch.ones_like(state["seen"]), **layers)
        return hidden, new_state


class SSD4Rec(TiM4Rec):
    """SSD4Rec* of the TiM4Rec paper: the same stack with the time path off and PyTorch's conv init."""

    name = "ssd4rec"
    Hyperparameters = SSD4RecHyperparameters
