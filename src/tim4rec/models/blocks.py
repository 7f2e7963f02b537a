"""Building blocks shared by several models (one place, no copies)."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.errors import ConfigError
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.ops.precision import as_float32, as_float32_for_gradients
from tim4rec.values import choice, fraction, optional, positive_int, positive_number

#: PyTorch's fused attention, in float32 also under autocast (:mod:`tim4rec.ops.precision`)
attention = as_float32(F.scaled_dot_product_attention)


class _MaskedScale(torch.autograd.Function):
    """x * keep / (1 - p) with the keep mask (bool) saved for the backward.

    Two vectorised passes, ``x * keep`` then ``* scale`` in place (where kept, the same numbers as ``x *
    scale`` in x's dtype; a dropped element is x * 0, so -0.0 for a negative x and NaN for a non-finite one,
    as PyTorch's own dropout gives): ``torch.where`` with a bool mask took about twice as long on a CPU (1.67
    against 0.75 ms for 10 x 200 x 256 float32 elements, 1 thread)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * keep).mul_(scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None, None


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask costs a third as much on a CPU.

    PyTorch's CPU dropout draws one Bernoulli number per element from its Mersenne Twister (about
    12% of a TiM4Rec training step at L 200). Here the mask comes from 64-bit random words, each
    split into four 16-bit numbers u, an element kept when u >= p * 2^16: p is rounded to a
    multiple of 2^-16 (0.2 -> 0.199997), otherwise the same distribution, drawn from the same
    seeded generator (runs stay reproducible and resumable). GPUs keep PyTorch's fused kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or self.p >= 1 or self.inplace:
            return super().forward(x)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[:n].view(x.shape) >= round(self.p * 65536) - 32768
        return _MaskedScale.apply(x, keep, 1.0 / (1.0 - self.p))


ACTIVATIONS = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "hardswish": nn.Hardswish,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


@dataclasses.dataclass(frozen=True)
class AttentionHyperparameters(Hyperparameters):
    """A self-attention stack's hyper-parameters (SASRec's defaults; the other attention models change some)."""

    hidden_size: int = hyperparameter(64, positive_int, size=True)
    n_layers: int = hyperparameter(2, positive_int, size=True)
    n_heads: int = hyperparameter(8, positive_int, size=True)
    inner_size: int = hyperparameter(256, optional(positive_int), size=True)
    hidden_dropout_prob: float = hyperparameter(0.2, fraction)
    attn_dropout_prob: float = hyperparameter(0.2, fraction)
    hidden_act: str = hyperparameter("gelu", choice(*sorted(ACTIVATIONS)))
    layer_norm_eps: float = hyperparameter(1e-12, positive_number)
    initializer_range: float = hyperparameter(0.02, positive_number)

    def check(self) -> None:
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")


def init_normal_(module: nn.Module, std: float = 0.02) -> None:
    """RecBole-style init: Linear and Embedding weights N(0, std), biases 0, LayerNorm (1, 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class FeedForward(nn.Module):
    """Position-wise feed-forward with a post-norm residual.

    ``LayerNorm(x + Dropout(W2 Dropout_inner(act(W1 x))))`` on (B, L, d); ``inner_dropout`` is 0
    in RecBole's transformer and equal to the outer dropout in TiM4Rec.
    """

    def __init__(
        self,
        hidden_size: int,
        inner_size: int,
        dropout: float,
        act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        inner_dropout: float = 0.0,
    ):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.act = activation(act)
        self.inner_dropout = Dropout(inner_dropout)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.dropout(self.fc2(self.inner_dropout(self.act(self.fc1(x))))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a post-norm residual, on PyTorch's fused SDPA.

    ``causal=True`` (SASRec): with right-padded inputs the causal mask alone keeps every real
    position from seeing the padding after it, so no padding mask is needed: outputs at positions
    < len are exact. ``causal=False`` (BERT4Rec): bidirectional, and ``forward`` takes a key
    padding mask ``real`` (B, L) bool so that every query attends to the real keys only.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        attn_dropout: float,
        dropout: float,
        layer_norm_eps: float = 1e-12,
        causal: bool = True,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.causal = causal
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = attn_dropout
        self.dropout = Dropout(dropout)
        self.layer_norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, d) -> (B, heads, L, d / heads)
        b, l, d = x.shape
        return x.view(b, l, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _attend(self, rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask) -> torch.Tensor:
        """Queries from ``rows`` (B, n, d) over keys and values (B, heads, L, d / heads), then the residual."""
        dropout = self.attn_dropout if self.training else 0.0
        attended = attention(self._heads(self.query(rows)), k, v, dropout_p=dropout, **mask)
        merged = attended.transpose(1, 2).reshape(rows.shape)  # (B, n, d)
        return self.layer_norm(rows + self.dropout(self.out(merged)))

    def forward(
        self, x: torch.Tensor, query_positions: torch.Tensor | None = None, real: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d); with ``query_positions`` (B,) only those rows: (B, 1, d) (causal only)."""
        k, v = self._heads(self.key(x)), self._heads(self.value(x))
        if not self.causal:
            if real is None:
                raise ValueError("a bidirectional SelfAttention needs the key padding mask `real`")
            return self._attend(x, k, v, attn_mask=real[:, None, None, :])
        if query_positions is None:
            return self._attend(x, k, v, is_causal=True)
        # one query per sequence, seeing the keys at positions <= its own
        rows = x.gather(1, query_positions.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))  # (B, 1, d)
        return self._attend(rows, k, v, attn_mask=visible_keys(query_positions, x.shape[1])[:, None, None, :])

    def step(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One new event per sequence (causal only), with a key/value cache.

        x (B, d) is the event at ``position`` (B,); keys, values (B, heads, L, d / heads) hold the
        earlier positions. Returns (out (B, d), keys, values) with this event's key and value
        written at ``position``: O(L d) work instead of the O(L^2 d) of a new forward.
        """
        rows = x[:, None, :]  # (B, 1, d)
        here = (torch.arange(keys.shape[2], device=x.device) == position[:, None])[:, None, :, None]  # (B, 1, L, 1)
        keys = torch.where(here, self._heads(self.key(rows)), keys)
        values = torch.where(here, self._heads(self.value(rows)), values)
        out = self._attend(rows, keys, values, attn_mask=visible_keys(position, keys.shape[2])[:, None, None, :])
        return out[:, 0], keys, values

    def empty_cache(self, batch_size: int, length: int, like: torch.Tensor) -> torch.Tensor:
        """A zero key (or value) cache (B, heads, L, d / heads) with ``like``'s dtype and device."""
        d = self.query.out_features
        return like.new_zeros(batch_size, self.n_heads, length, d // self.n_heads)


class AttentionBlock(nn.Module):
    """An attention layer then the feed-forward block (each with its residual and LayerNorm). The
    attention is causal :class:`SelfAttention` (SASRec), bidirectional (``causal=False``, BERT4Rec) or a
    given module (TiSASRec's time-aware attention); the block passes its arguments on to it."""

    def __init__(self, hp: AttentionHyperparameters, *, causal: bool = True, attention: nn.Module | None = None):
        super().__init__()
        self.attention = attention or SelfAttention(
            hp.hidden_size, hp.n_heads, hp.attn_dropout_prob, hp.hidden_dropout_prob, hp.layer_norm_eps, causal=causal
        )
        self.feed_forward = FeedForward(
            hp.hidden_size, hp.inner_size, hp.hidden_dropout_prob, hp.hidden_act, hp.layer_norm_eps
        )

    def forward(self, x: torch.Tensor, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L, d) (or the rows the attention's arguments select)."""
        return self.feed_forward(self.attention(x, *args, **kwargs))

    def step(self, x: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One event (B, d) with the attention's key/value cache (and what else its ``step`` takes) ->
        (out (B, d), keys, values)."""
        out, keys, values = self.attention.step(x, *cache)
        return self.feed_forward(out), keys, values


class RequestGap(nn.Module):
    """The read-out at a request time: ``h + W2 SiLU(W1 phi(g))`` with ``phi(g) = log1p(g) / log1p(1 day)``,
    ``g`` >= 0 the seconds from the last event to the time the prediction is for.

    A user back after five minutes and one back after five months then get different lists. ``W2``
    starts at 0, so a model starts out as the same model without the path; the path runs on the
    read-out only, so a streaming state's update stays O(1) (the gap enters when a list is asked for).
    """

    def __init__(self, hidden_size: int, features: int = 16):
        super().__init__()
        self.encode = nn.Linear(1, features)
        self.project = nn.Linear(features, hidden_size)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, hidden: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """hidden (..., d), gaps (...) seconds -> (..., d)."""
        scaled = torch.log1p(gaps.clamp(min=0).to(hidden.dtype)) / math.log1p(86_400.0)
        return hidden + self.project(F.silu(self.encode(scaled[..., None])))


def visible_keys(query_positions: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) bool: key positions <= each row's query position (B,)."""
    return torch.arange(length, device=query_positions.device)[None, :] <= query_positions[:, None]


@as_float32_for_gradients  # under autocast: float32 in training, autocast's dtype without gradients
def causal_conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """Depthwise causal convolution over time: x (B, L, C) -> (B, L, C), output t sees inputs <= t.

    ``conv`` is a depthwise Conv1d, stride 1, dilation 1 (its weights (C, 1, K) and bias; its own
    padding is not used).
    The input is left-padded with K-1 zero steps and run as a channels-last 2-d convolution: no
    transposed copies of x, and oneDNN's channels-last depthwise kernels (forward + backward about
    1.5x faster than Conv1d on (B, C, L) at B = 16, L = 3200, C = 192 on one CPU thread).
    """
    if conv.stride != (1,) or conv.dilation != (1,) or conv.groups != conv.in_channels:
        raise ValueError(f"causal_conv needs a depthwise Conv1d with stride 1 and dilation 1, got {conv}")
    k = conv.kernel_size[0]
    padded = F.pad(x, (0, 0, k - 1, 0)).transpose(1, 2).unsqueeze(2)  # (B, C, 1, L+K-1), channels-last strides
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    out = F.conv2d(padded, conv.weight.to(x.dtype).unsqueeze(2), bias, groups=conv.groups)  # (B, C, 1, L)
    return out.squeeze(2).transpose(1, 2)  # (B, L, C)


def causal_conv_step(conv: nn.Conv1d, window: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of :func:`causal_conv`: window (B, C, K-1) of past inputs, x (B, C) -> (y (B, C), window)."""
    full = torch.cat([window, x[..., None]], dim=-1)  # (B, C, K)
    y = (full * conv.weight[:, 0, :]).sum(-1)
    if conv.bias is not None:
        y = y + conv.bias
    return y, full[..., 1:]


def adopt_children(owner: nn.Module, part: nn.Module) -> nn.Module:
    """Register ``part``'s sub-modules on ``owner`` under their own names and return ``part``.

    ``owner`` then holds the parameters (``owner.<child>.weight``: flat state-dict keys, as in a
    reference implementation's checkpoints), while ``part``'s methods use the same sub-modules.
    ``part`` itself must own no parameters or buffers directly, and ``owner`` keeps it as a plain
    attribute, so it is not registered twice.
    """
    if any(True for _ in part.parameters(recurse=False)) or any(True for _ in part.buffers(recurse=False)):
        raise ValueError(f"{type(part).__name__} holds parameters of its own; only its sub-modules can be adopted")
    for name, child in part.named_children():
        if name in owner._modules:
            raise ValueError(f"{type(owner).__name__} already has a sub-module named {name!r}")
        owner.add_module(name, child)
    return part
