"""Caser (Tang & Wang, WSDM 2018) as in RecBole 1.2, without the user embedding.

The history is an image ``E`` (L x d) of item embeddings, fed to two kinds of convolution:

- vertical: ``nv`` filters of size (L x 1), i.e. ``nv`` learned weightings of the L positions,
  giving ``nv * d`` features;
- horizontal: for every height ``h`` in 1..L, ``nh`` filters of size (h x d) slid over the
  positions, ReLU, then max-pooled over positions, giving ``nh * L`` features.

``z = ReLU(fc1(Dropout([vertical; horizontal])))`` and the sequence representation is
``ReLU(fc2(z))``; scores are its dot products with the item table (column 0 = padding).

Caser gives one vector per history. Read at every position of a longer sequence, position t's
history is the last ``min(t + 1, L)`` events up to t, so Caser is causal in the contract's sense:
:meth:`forward` (B, W) -> (B, W, d) gives each position the vector of its own history, and the
model also trains in the causal regime, on windows of ``s + L - 1`` events (``history_span``).
That form computes exactly what the prefix form computes for each target, at a fraction of the
cost, because neighbouring histories share their convolutions:

- a full image (t >= L - 1) holds the events t - L + 1..t: each filter is correlated once with
  the whole window (all heights in one product of Fourier transforms) and max-pooled over each run
  of ``L - h + 1`` positions (from a table of running maxima);
- a short history (k = t + 1 < L events, then padding rows) differs from the full convolution
  only in the windows that cross its end, where the first ``m = k - p`` rows of the filter see
  events and the rest the padding row: those are partial sums over the filter's rows, one
  cumulative sum per height, and each goes to the history that ends where it is cut.

The prefix form (:meth:`encode`, one image per row, for read-outs and the prefix regime) is the
first case at a window of width L. Tests check both forms against RecBole's convolutions.

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
multiply-adds per history (about 7e8 at L = 200) computed directly; the Fourier transforms cut
that to a few times ``nh * d * L`` per position of a window (the product of the transforms) plus
a transform of the filters per step, and a user's first L - 1 histories share ``nh * d * L^3 / 6``
multiply-adds of partial sums (one history's direct cost for all of them).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from tim4rec.data.batches import CAUSAL, PREFIX, Batch
from tim4rec.models.base import SequentialRecommender
from tim4rec.models.blocks import Dropout
from tim4rec.models.hyperparameters import Hyperparameters, hyperparameter
from tim4rec.ops.precision import as_float32
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
    regime = PREFIX  # the published form; train_regime: causal computes the same per target, faster
    causal = True  # position t reads the last L events up to t
    fixed_length = False  # forward takes windows longer than L; a read-out takes the last L events
    Hyperparameters = CaserHyperparameters

    def __init__(self, n_items: int, max_seq_length: int, hp: CaserHyperparameters):
        super().__init__(n_items, max_seq_length)
        embedding_size, nv, nh = hp.embedding_size, hp.nv, hp.nh
        self.embedding_size, self.nv, self.nh, self.reg_weight = embedding_size, nv, nh, hp.reg_weight
        self.history_span = max_seq_length  # the events a position reads: causal windows carry L - 1 of context
        self._bank_indices: dict[tuple, torch.Tensor] = {}
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

    # -- the prefix form: one image per row ------------------------------------------------------
    def encode(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, l) right-padded ids, (B,) lengths -> (B, d), the history's vector: its last min(len, L) events
        left-aligned in an (L x d) image, padding rows after them (the convolutions of an image of L rows
        are those of a window of width L at its one position, :meth:`_full_features`)."""
        image = self._image(*self._last_events(item_seq, item_seq_len))  # (B, L, d)
        # in pieces of ENCODE_ROWS: the window values (L, rows, nh*L) of 1,024 rows take 1.3 GB at L = 200
        features = [self._full_features(part)[:, 0] for part in image.split(self.ENCODE_ROWS)]
        return self._head(torch.cat(features))

    #: rows per piece of :meth:`encode`
    ENCODE_ROWS = 256

    def _last_events(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last min(len, L) events of each row, right-padded to L columns: (B, L) ids, (B,) lengths."""
        b, length = item_seq.shape
        if length > self.max_seq_length:
            start = (item_seq_len - self.max_seq_length).clamp(min=0)
            index = (start[:, None] + torch.arange(self.max_seq_length, device=item_seq.device)).clamp(max=length - 1)
            return item_seq.gather(1, index), item_seq_len.clamp(max=self.max_seq_length)
        return F.pad(item_seq, (0, self.max_seq_length - length)), item_seq_len

    def _image(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """(B, W) ids -> (B, W, d) embeddings, with the padding row at every position >= len."""
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)
        return self.item_embedding(item_seq.masked_fill(positions[None, :] >= item_seq_len[:, None], 0))

    @property
    def padding_row(self) -> torch.Tensor:
        """(d,) the padding id's embedding, as a lookup gives it: without a gradient (``padding_idx``)."""
        return self.item_embedding.weight[0].detach()

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        """(..., nv*d + nh*L) convolution features -> (..., d): dropout, fc1, fc2."""
        return F.relu(self.fc2(F.relu(self.fc1(self.dropout(features)))))

    # -- the causal form: every position of a window at once ---------------------------------------
    def _filter_bank(self, heights: range, rows: int) -> torch.Tensor:
        """(rows, d, len(heights) * nh): row j of the horizontal filters of ``heights`` (zero below a filter's
        height); the nh channels of height h at columns (h - heights.start) * nh onwards, as in the features.
        One scatter of all their weights (per-filter copies cost more than the FFT of the bank)."""
        weights = torch.cat([self.conv_h[h - 1].weight.reshape(-1) for h in heights])  # each (nh, h, d)
        index = self._bank_index(heights, rows, weights.device)
        bank = weights.new_zeros(rows * self.embedding_size * len(heights) * self.nh)
        return bank.scatter(0, index, weights).view(rows, self.embedding_size, -1)

    def _bank_index(self, heights: range, rows: int, device: torch.device) -> torch.Tensor:
        """Where each weight of :meth:`_filter_bank` goes in the flat bank (cached per block)."""
        key = (heights.start, heights.stop, rows, str(device))
        if key not in self._bank_indices:
            d, nh, channels = self.embedding_size, self.nh, len(heights) * self.nh
            parts = []
            for g, h in enumerate(heights):
                n, j, e = torch.meshgrid(torch.arange(nh), torch.arange(h), torch.arange(d), indexing="ij")
                parts.append(((j * d + e) * channels + g * nh + n).reshape(-1))
            self._bank_indices[key] = torch.cat(parts).to(device)
        return self._bank_indices[key]

    @as_float32  # partial sums over up to L rows and Fourier transforms (no bfloat16 FFT on a CPU)
    def _short_features(self, image: torch.Tensor) -> torch.Tensor:
        """(R, L, d) images of R windows' first L events -> (R, L, nv*d + nh*L): position t's features are
        those of the history of its first k = t + 1 events followed by L - k padding rows."""
        r, length, d = image.shape
        pad = self.padding_row  # (d,)
        weight_v = self.conv_v.weight.reshape(self.nv, length)  # (nv, L)
        # vertical: sum_{i<k} w[i] e_i + sum_{i>=k} w[i] pad
        events = torch.einsum("ni,rid->rnid", weight_v, image).cumsum(2)  # (R, nv, L, d), through row i = k - 1
        after = F.pad(weight_v.flip(1).cumsum(1).flip(1)[:, 1:], (0, 1))  # (nv, L): sum_{i>=k} w[i]
        vertical = events + after[None, :, :, None] * pad + self.conv_v.bias[None, :, None, None]
        vertical = vertical.transpose(1, 2).reshape(r, length, self.nv * d)
        blocks = [range(h, min(h + self.SHORT_BLOCK, length + 1)) for h in range(1, length + 1, self.SHORT_BLOCK)]
        return torch.cat([vertical, *(self._short_block(image, heights) for heights in blocks)], dim=2)

    #: heights per block of the short-history sums: fewer, larger tensor operations
    SHORT_BLOCK = 10

    def _short_block(self, image: torch.Tensor, heights: range) -> torch.Tensor:
        """The horizontal features (R, L, C) of the filters of ``heights`` (C = their channels) for the histories
        of the first k = t + 1 events of (R, L, d) images, padding rows after them."""
        r, length, d = image.shape
        rows, windows = heights[-1], length - heights[0] + 1  # filter rows j, window positions p (at most)
        bank = self._filter_bank(heights, rows)  # (rows, d, C)
        bias = torch.cat([self.conv_h[h - 1].bias for h in heights])  # (C,)
        # products[j, r * P + p] = w_j . e_{p+j} (the image padded below so that every p + j exists)
        events = F.pad(image, (0, 0, 0, windows + rows - 1 - length)).unfold(1, rows, 1)  # (R, P, d, rows)
        products = torch.bmm(events.permute(3, 0, 1, 2).reshape(rows, r * windows, d), bank)  # (rows, R*P, C)
        # the rest of a filter over padding rows: after[m] = sum_{j>=m} w_j . pad (rows + 1, C)
        after = F.pad((bank * self.padding_row[:, None]).sum(1).flip(0).cumsum(0).flip(0), (0, 0, 0, 1))
        height = torch.arange(heights.start, heights.stop, device=image.device).repeat_interleave(self.nh)
        return _ShortHistoryMax.apply(products, after, bias, height, r, length)

    @as_float32
    def _full_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, W, d) images, W >= L -> (B, W - L + 1, nv*d + nh*L): the features of the L events ending at each
        position t = L - 1..W - 1. Every filter is correlated with the whole window at once, by FFT."""
        b, width, d = image.shape
        length = self.max_seq_length
        if b == 0:  # no rows: MKL's FFT refuses an empty batch
            return image.new_zeros(0, width - length + 1, self.nv * d + self.nh * length)
        n = _fft_size(width)  # no wrap-around: a filter never reaches past position W - 1
        spectrum = torch.fft.rfft(image, n=n, dim=1)  # (B, n/2 + 1, d)
        kernel_v = torch.fft.rfft(self.conv_v.weight.reshape(self.nv, length), n=n, dim=1).conj()  # (nv, n/2 + 1)
        vertical = torch.fft.irfft(spectrum[:, :, None, :] * kernel_v.t()[None, :, :, None], n=n, dim=1)
        vertical = vertical[:, : width - length + 1] + self.conv_v.bias[:, None]  # (B, W - L + 1, nv, d)
        heights = range(1, length + 1)
        values = _WindowCorrelation.apply(image, self._filter_bank(heights, length), n)  # (W, B, nh*L)
        values = F.relu(values + torch.cat([conv.bias for conv in self.conv_h]))  # window p of each filter
        # the best of the L - h + 1 windows of each image t: p from t - L + 1 to t - h + 1
        horizontal = _SlidingMax.apply(values, length, self.nh, width - length + 1).transpose(0, 1)  # (B, W-L+1, nh*L)
        return torch.cat([vertical.reshape(b, -1, self.nv * d), horizontal], dim=2)

    def _position_features(self, image: torch.Tensor, short_rows: torch.Tensor | None = None) -> torch.Tensor:
        """(B, W, d) -> (B, W, F) features of every position; rows outside ``short_rows`` (a bool (B,) mask)
        get them only at t >= L - 1 (zeros before: positions that carry no loss)."""
        b, width, _ = image.shape
        length = self.max_seq_length
        if width < length:
            pad = self.padding_row.expand(b, length - width, -1)
            return self._position_features(torch.cat([image, pad], dim=1), short_rows)[:, :width]
        full = self._full_features(image)  # positions L - 1..W - 1
        every_row = short_rows is None or image.device.type == "meta"  # meta tensors hold no mask to select by
        rows = torch.arange(b, device=image.device) if every_row else torch.nonzero(short_rows).flatten()
        if not len(rows):
            return torch.cat([full.new_zeros(b, length - 1, full.shape[2]), full], dim=1)
        short = self._short_features(image[rows, :length])[:, : length - 1]  # (R, L - 1, F): positions 0..L - 2
        if not every_row:
            short = full.new_zeros(b, length - 1, full.shape[2]).index_copy(0, rows, short)
        return torch.cat([short, full], dim=1)

    def forward(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        """(B, W) right-padded ids -> (B, W, d): position t holds the vector of the history of the last
        min(t + 1, L) events up to t (positions >= len: as if the padding id were there)."""
        self.check_history(item_seq, item_seq_len, timestamps)
        return self._head(self._position_features(self._image(item_seq, item_seq_len)))

    def readout(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor, timestamps: torch.Tensor) -> torch.Tensor:
        return self.encode(item_seq, item_seq_len)  # (B, d)

    def regularization(self) -> torch.Tensor:
        """``reg_weight`` x the sum of the L2 norms of the embedding, convolution and linear weights."""
        weights = [self.item_embedding.weight, self.conv_v.weight, self.fc1.weight, self.fc2.weight]
        weights += [conv.weight for conv in self.conv_h]
        return self.reg_weight * torch.stack([weight.norm(2) for weight in weights]).sum()

    def target_states(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix batches as the base class; causal windows: the features of the positions with a target only,
        the short-history sums only for rows with a target before position L - 1."""
        if batch.regime is not CAUSAL:
            return super().target_states(batch)
        self.check_history(batch.item_seq, batch.item_seq_len, batch.timestamps)
        width = batch.item_seq.shape[1]
        index = batch.target_index  # (T,) flat b * W + t
        early = ((index % width) < self.max_seq_length - 1).long()  # targets whose history is shorter than L
        short_rows = torch.zeros(len(batch), dtype=torch.long, device=index.device)
        short_rows = short_rows.index_add_(0, index // width, early) > 0
        features = self._position_features(self._image(batch.item_seq, batch.item_seq_len), short_rows)
        selected = features.reshape(-1, features.shape[-1]).index_select(0, index)
        return self._head(selected), batch.target.reshape(-1)[index]


def _fft_size(length: int) -> int:
    """The smallest n >= length of the form 2^a 3^b 5^c (fast FFT sizes)."""
    n = length
    while True:
        m = n
        for factor in (2, 3, 5):
            while m % factor == 0:
                m //= factor
        if m == 1:
            return n
        n += 1


class _ShortHistoryMax(torch.autograd.Function):
    """Max-pooled ReLU features of histories of k = 1..L events followed by padding rows (Caser's short images),
    from the per-row products of the filters: every window either lies in the history (all h rows over events),
    is cut by its end after m = k - p rows (the other h - m over the padding row), or lies in the padding.

    Inputs: ``products`` (rows, R*P, C) = w_j . e_{p+j}; ``after`` (rows + 1, C) = sum_{j>=m} w_j . pad; ``bias``
    (C,); ``height`` (C,) the filter height of each channel; R images of L rows. Output (R, L, C), row k - 1.

    The max picks one window per output, so the backward scatters each output's gradient to the partial sum
    of its window (a reverse cumulative sum gives the products' gradient) instead of keeping the O(R P rows C)
    intermediate tensors of every window for autograd.
    """

    @staticmethod
    def forward(ctx, products, after, bias, height, r: int, length: int):  # noqa: ANN001, ANN205
        rows, _, channels = products.shape
        windows = products.shape[1] // r
        device = products.device
        partial = products.cumsum(0).view(rows, r, windows, channels)  # [m - 1]: the first m rows
        p = torch.arange(windows, device=device)[:, None]
        outside = torch.zeros(windows, channels, device=device, dtype=products.dtype)
        outside = outside.masked_fill(p > length - height, -torch.inf)  # window p of height h leaves the image
        k = torch.arange(1, length + 1, device=device)[:, None]  # (L, 1) history lengths
        # windows that hold events only (m = h), for k >= p + h: a running maximum over p
        whole = partial.gather(0, (height - 1).expand(1, r, windows, channels)).squeeze(0)
        best_whole, best_p = F.relu(whole + (bias + outside)).cummax(dim=1)  # (R, P, C); ReLU(-inf) = 0
        at = (k - height).clamp(0, windows - 1).expand(r, length, channels)
        value = best_whole.gather(1, at) * (k >= height)
        m_star = height.expand(r, length, channels).clone()
        p_star = best_p.gather(1, at)
        # windows cut after m = 1..h-1 rows: history k = p + m, so row m - 1 of the partial sums, shifted by m
        crossing = value.new_zeros(r, windows + rows, channels)  # [k]; 0: below every ReLU
        crossing_m = torch.zeros(r, windows + rows, channels, dtype=torch.long, device=device)
        for m in range(1, rows):
            offset = ((after[m] + bias) + outside).masked_fill(m >= height, -torch.inf)  # (P, C)
            candidate = partial[m - 1] + offset  # (R, P, C), for k = m..m + P - 1
            best = crossing[:, m : m + windows]
            crossing_m[:, m : m + windows].masked_fill_(candidate > best, m)
            torch.maximum(best, candidate, out=best)
        crossing, crossing_m = crossing[:, 1 : length + 1], crossing_m[:, 1 : length + 1]
        wins = crossing > value
        value = torch.where(wins, crossing, value)
        m_star = torch.where(wins, crossing_m, m_star)
        p_star = torch.where(wins, k - crossing_m, p_star)
        # windows wholly in the padding (p >= k) exist while k <= L - h: m = 0
        only_padding = F.relu(after[0] + bias) * (k <= length - height)  # (L, C)
        wins = only_padding > value
        value = torch.where(wins, only_padding, value)
        m_star = m_star.masked_fill(wins, 0)
        ctx.save_for_backward(m_star, p_star.clamp(0, windows - 1), height, value > 0)
        ctx.shape = (rows, r, windows, channels)
        return value

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        m_star, p_star, height, active = ctx.saved_tensors
        rows, r, windows, channels = ctx.shape
        grad = grad * active  # (R, L, C)
        grad_bias = grad.sum((0, 1))
        # the padding part of the chosen window: after[m*] (windows that hold events only have none)
        uses_after = m_star < height
        grad_after = torch.zeros(rows + 1, channels, dtype=grad.dtype, device=grad.device)
        grad_after.scatter_add_(0, m_star.reshape(-1, channels), (grad * uses_after).reshape(-1, channels))
        # the event part: the partial sum of its first m* rows at window p*: d/d products[j, p*] = g for j < m*
        # written in reverse row order (m* at rows - m*), so that a cumulative sum gives [j] = sum over m > j
        chosen = torch.zeros(rows, r, windows, channels, dtype=grad.dtype, device=grad.device)
        rr = torch.arange(r, device=grad.device)[:, None, None]
        cc = torch.arange(channels, device=grad.device)
        index = ((((rows - m_star) % rows) * r + rr) * windows + p_star) * channels + cc  # m* = 0: no events
        chosen.view(-1).index_add_(0, index.reshape(-1), (grad * (m_star > 0)).reshape(-1))
        grad_products = chosen.cumsum_(0).flip(0)
        return grad_products.view(rows, r * windows, channels), grad_after, grad_bias, None, None, None


class _WindowCorrelation(torch.autograd.Function):
    """Every filter correlated with every window position by FFT: (B, W, d) images and a (rows, d, C) filter
    bank -> (W, B, C), out[p, b, c] = sum_{j, d} bank[j, d, c] image[b, p + j, d] (0 past the image's end), at
    FFT size n >= W (positions p > W - rows wrap around and must not be read). The backward uses the same
    transforms (a convolution for the images, a correlation for the bank) instead of differentiating the FFT
    of the bank, which costs several times the forward."""

    @staticmethod
    def forward(ctx, image, bank, n: int):  # noqa: ANN001, ANN205
        width, rows = image.shape[1], bank.shape[0]
        spectrum = torch.fft.rfft(image, n=n, dim=1).transpose(0, 1)  # (F, B, d)
        kernels = torch.fft.rfft(bank.reshape(rows, -1).t(), n=n, dim=1).t().reshape(-1, *bank.shape[1:])  # (F, d, C)
        ctx.save_for_backward(spectrum, kernels)
        ctx.sizes = (n, width, rows)
        return torch.fft.irfft(torch.bmm(spectrum, kernels.conj()), n=n, dim=0)[:width]

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        spectrum, kernels = ctx.saved_tensors
        n, width, rows = ctx.sizes
        grad_spectrum = torch.fft.rfft(grad, n=n, dim=0)  # (F, B, C)
        grad_image = torch.fft.irfft(torch.bmm(grad_spectrum, kernels.transpose(1, 2)), n=n, dim=0)[:width]
        grad_bank = torch.bmm(spectrum.transpose(1, 2), grad_spectrum.conj())  # (F, d, C)
        grad_bank = torch.fft.irfft(grad_bank.reshape(grad_bank.shape[0], -1).t(), n=n, dim=1)[:, :rows]
        return grad_image.transpose(0, 1), grad_bank.t().reshape(rows, *kernels.shape[1:]), None


class _SlidingMax(torch.autograd.Function):
    """The best window of each image: (W, B, nh*L) window values, channel c of height h = c // nh + 1 ->
    (count, B, nh*L), out[t, b, c] = max of values[t + i, b, c] over i < L - h + 1 (the image's windows).

    Each is the larger of two overlapping runs of 2^a windows (2^a <= L - h + 1 < 2^(a+1)) from a table of
    running maxima, built for the channels that need each length (long spans: the first channels); the
    backward sends each gradient to the window that gave the max."""

    @staticmethod
    def forward(ctx, values, length: int, nh: int, count: int):  # noqa: ANN001, ANN205
        width, batch, channels = values.shape
        device = values.device
        ctx.width = width
        if count == 1:  # one image (a read-out): the maximum over each channel's windows directly
            span = (length + 1 - torch.arange(1, length + 1, device=device)).repeat_interleave(nh)
            outside = torch.arange(width, device=device)[:, None] >= span  # (W, C)
            out, at = values.masked_fill(outside[:, None], -torch.inf).max(dim=0, keepdim=True)
            ctx.save_for_backward(at)
            return out
        runs, where = values, torch.arange(width, device=device, dtype=torch.int32)[:, None, None]
        where = where.expand(width, batch, channels)
        out = values.new_empty(count, batch, channels)
        at = torch.empty(count, batch, channels, dtype=torch.long, device=device)
        t = torch.arange(count, device=device)[:, None, None]
        for a in range(length.bit_length()):
            run = 2**a
            # the heights whose span L - h + 1 lies in [2^a, 2^(a+1))
            low, high = max(1, length + 2 - 2 * run), length + 1 - run
            if low <= high:
                part = slice((low - 1) * nh, high * nh)
                span = (length + 1 - torch.arange(low, high + 1, device=device)).repeat_interleave(nh)
                second = (t + (span - run)).expand(-1, batch, -1)  # (count, B, channels of the part)
                first_value, first_at = runs[:count, :, part], where[:count, :, part]
                second_value, second_at = runs[:, :, part].gather(0, second), where[:, :, part].gather(0, second)
                later = second_value > first_value
                out[:, :, part] = torch.where(later, second_value, first_value)
                at[:, :, part] = torch.where(later, second_at, first_at)
            longer = (length + 1 - 2 * run) * nh  # channels whose span reaches 2^(a+1)
            if longer > 0:
                a_runs, b_runs = runs[: width - (2 * run - 1), :, :longer], runs[run : width - run + 1, :, :longer]
                a_at, b_at = where[: width - (2 * run - 1), :, :longer], where[run : width - run + 1, :, :longer]
                later = b_runs > a_runs
                runs, where = torch.where(later, b_runs, a_runs), torch.where(later, b_at, a_at)
        ctx.save_for_backward(at)
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (at,) = ctx.saved_tensors
        grad_values = grad.new_zeros(ctx.width, *grad.shape[1:])
        return grad_values.scatter_add_(0, at, grad), None, None, None
