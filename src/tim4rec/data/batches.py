"""Samples and batches: the targets of a split (:mod:`tim4rec.data.split`) as padded (B, L) tensors.

A sample's history is the most recent ``L`` events of its user before its first target,
**right-padded** (RecBole style): real items at positions ``0..len-1``, padding id 0 after them,
timestamps 0 at padding.

Two training regimes feed the same training targets:

- ``prefix``: one sample per training target (history -> target), RecBole's protocol; the loss is
  read at position ``len - 1``.
- ``causal``: each user's training targets are cut into windows of at most ``L`` positions,
  aligned so that the most recent window is the full one; the loss is read at every position of
  a window that holds a new target, each training target exactly once. Only valid for models
  whose output at position t depends on events <= t. With a window stride ``s < L`` consecutive
  windows overlap: each window's last ``s`` positions are its targets and the ``L - s`` before
  them are context without loss, so every target sees up to ``L - 1`` earlier events as in the
  prefix regime (``s = 1`` gives exactly the prefix regime's targets and histories); an epoch
  then costs about ``L / s`` times as much. A model whose output at a position reads only the
  last ``L`` events (Caser's image of the history) takes windows of ``s + L - 1`` positions
  instead (``window_length``): ``L - 1`` of context before the ``s`` new targets, so every target
  sees the prefix regime's history and each window gives ``s`` of them.

Validation and test batches are prefix batches (one target per row) in both regimes. Every
:class:`Batch` says which regime it belongs to; nothing guesses it from a tensor's shape.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from tim4rec.data.preprocess import Interactions
from tim4rec.data.split import TargetIndex
from tim4rec.errors import DataError


class Regime(str, enum.Enum):
    """A training regime, parsed once from its name (``train_regime``, a model's default); compared by
    identity downstream. A ``str`` so that configs and ``results.json`` keep the plain name."""

    PREFIX = "prefix"  # one target per row, read at item_seq_len - 1 (also every evaluation)
    CAUSAL = "causal"  # a target at every position of a window of L events

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    def rows_per_batch(self, targets: int, per_window: int) -> int:
        """Rows of a training batch of about ``targets`` training targets: a causal window holds about
        ``per_window`` of them (its stride, L without overlap), so both regimes take similar steps."""
        return targets if self is Regime.PREFIX else max(1, round(targets / per_window))


PREFIX, CAUSAL = Regime.PREFIX, Regime.CAUSAL
REGIMES = tuple(Regime)


@dataclass
class Batch:
    """One batch of right-padded histories.

    ``regime`` is ``"prefix"`` (one target per row, read at ``item_seq_len - 1``; training in the
    prefix regime and every evaluation) or ``"causal"`` (a target at every position of a window).
    """

    regime: Regime
    item_seq: torch.Tensor  # (B, L) long, item ids, 0 at padding
    item_seq_len: torch.Tensor  # (B,) long
    timestamps: torch.Tensor  # (B, L) long seconds, 0 at padding
    target: torch.Tensor  # prefix: (B,) long; causal: (B, L) long, 0 where no loss is taken
    user: torch.Tensor | None = None  # (B,) long user ids
    #: the time of each target (prefix: (B,); causal: (B, L), 0 where no loss is taken): what a model that
    #: reads the request time (the time its prediction is for) takes in training and evaluation
    target_time: torch.Tensor | None = None
    #: causal: (T,) long flat indices ``b * L + t`` of the positions with a target (row-major)
    target_index: torch.Tensor | None = None
    #: what a model's ``prepare_training_batch`` adds (BERT4Rec's cloze masks)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.regime = Regime(self.regime)
        except ValueError:
            raise ValueError(f"unknown regime {self.regime!r}; expected one of {[r.value for r in REGIMES]}") from None
        if self.regime is CAUSAL and self.target_index is None:
            self.target_index = torch.nonzero(self.target.reshape(-1) > 0).squeeze(1)

    def __len__(self) -> int:
        return self.item_seq.shape[0]

    @property
    def n_targets(self) -> int:
        """The number of positions that carry a loss: one per row, or those of ``target_index``."""
        return len(self) if self.target_index is None else int(self.target_index.numel())

    def rows(self, start: int, stop: int) -> Batch:
        """The batch of rows ``start:stop`` (``target_index`` re-based to them)."""
        index = self.target_index
        if index is not None:
            length = self.item_seq.shape[1]
            inside = (index >= start * length) & (index < stop * length)
            index = index[inside] - start * length
        per_row = {
            f.name: getattr(self, f.name)[start:stop]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "target_index"
        }
        extras = {key: value[start:stop] for key, value in self.extras.items()}
        return replace(self, **per_row, target_index=index, extras=extras)

    def split(self, rows: int) -> list[Batch]:
        """Consecutive batches of at most ``rows`` rows (the whole batch when it is not larger)."""
        if len(self) <= rows:
            return [self]
        return [self.rows(start, min(start + rows, len(self))) for start in range(0, len(self), rows)]

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=True)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved, extras={key: value.to(device) for key, value in self.extras.items()})


@dataclass
class SampleSet:
    """Samples as index arrays into the flat event arrays.

    ``starts``/``lengths`` (S,) locate each input history; ``targets`` is (S,) flat indices of the
    target events for one-target samples, or ``None`` for causal windows (the targets are the
    events right after each input position); ``context`` (S,) for causal windows: how many leading
    positions carry no loss (their targets belong to an earlier window), None when all do.
    ``width``: the padded length of a batch row (None: L).
    """

    starts: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray | None
    users: np.ndarray  # (S,) user ids 1..n_users
    context: np.ndarray | None = None
    width: int | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def regime(self) -> Regime:
        return PREFIX if self.targets is not None else CAUSAL

    def subset(self, rows: np.ndarray) -> SampleSet:
        """The samples at ``rows``."""
        targets = None if self.targets is None else self.targets[rows]
        context = None if self.context is None else self.context[rows]
        return SampleSet(self.starts[rows], self.lengths[rows], targets, self.users[rows], context, self.width)

    @property
    def n_targets(self) -> int:
        if self.targets is not None:
            return len(self)
        return int(self.lengths.sum() - (0 if self.context is None else self.context.sum()))


class SequenceData:
    """Builds the training, validation and test samples of a split and turns them into batches."""

    def __init__(self, interactions: Interactions, split: TargetIndex, max_seq_length: int):
        if max_seq_length < 1:
            raise DataError(f"MAX_ITEM_LIST_LENGTH must be >= 1, got {max_seq_length}")
        self.interactions = interactions
        self.split = split
        self.max_seq_length = max_seq_length
        self.items = torch.from_numpy(np.concatenate([interactions.items, [0]]))  # (N+1,) last = pad
        self.timestamps = torch.from_numpy(np.concatenate([interactions.timestamps, [0]]))
        self.pad_index = len(interactions.items)

    # ----------------------------------------------------------------------------- samples
    def _one_target(self, target_index: np.ndarray, users: np.ndarray) -> SampleSet:
        user_start = self.interactions.offsets[users - 1]
        lengths = np.minimum(self.max_seq_length, target_index - user_start)
        return SampleSet(target_index - lengths, lengths, target_index, users)

    def evaluation_samples(self, split: str) -> SampleSet:
        """One sample per evaluated user: ``split`` is ``"valid"`` or ``"test"`` (anything else is an error)."""
        users, targets = self.split.evaluation_targets(split)
        return self._one_target(targets, users)

    def train_target_counts(self) -> np.ndarray:
        """(n_items + 1,) int64: how often each item is a training target of the split (0 for padding)."""
        split = self.split
        has = split.train_last >= split.train_first
        first, last = split.train_first[has], split.train_last[has]
        counts = last - first + 1
        targets = np.repeat(first, counts) + _ranges(counts)  # every training target's event index
        return np.bincount(self.interactions.items[targets], minlength=self.interactions.n_items + 1)

    def check_trainable(self) -> None:
        """Refuse a split that leaves no training target, naming the dataset: a run would have nothing to
        learn from (e.g. leave-one-out where no user has more than 3 events)."""
        split = self.split
        if not (split.train_last >= split.train_first).any():
            raise DataError(
                f"{self.interactions.label}: no user has a training event after the split "
                f"({split.description}), so there is nothing to train on (a user's first event is history only; "
                "leave-one-out trains on users with at least 4 events, a temporal split on users with 2 before the cut)"
            )

    def train_samples(
        self, regime: Regime | str, window_stride: int | None = None, window_length: int | None = None
    ) -> SampleSet:
        """The training samples of ``regime`` (a :class:`Regime` or its name); a DataError when there are none.
        ``window_stride``: causal windows start every ``window_stride`` targets (None: L, no overlap);
        ``window_length``: their length (None: L), at least the stride."""
        try:
            regime = Regime(regime)
        except ValueError:
            names = [r.value for r in REGIMES]
            raise DataError(f"unknown training regime {regime!r}; expected one of {names}") from None
        self.check_trainable()
        users, first, last = self.split.users, self.split.train_first, self.split.train_last
        counts = last - first + 1
        has = counts > 0
        users, first, last, counts = users[has], first[has], last[has], counts[has]
        if regime is PREFIX:
            target = np.repeat(last - counts + 1, counts) + _ranges(counts)
            return self._one_target(target, np.repeat(users, counts))
        window = window_length or self.max_seq_length
        stride = self.max_seq_length if window_stride is None else window_stride
        if not 1 <= stride <= window:
            bound = "the window length" if window_length else "MAX_ITEM_LIST_LENGTH"
            raise DataError(f"window_stride: expected from 1 to {bound} = {window}, got {stride}")
        n_windows = -(-counts // stride)
        # window k (0 = most recent) of a user ends at target last - k*s: new targets (last - (k+1)*s, last - k*s],
        # and positions reach back to fill the window for context (never before the user's first target)
        k = _ranges(n_windows)
        user_rep, user_first = np.repeat(users, n_windows), np.repeat(first, n_windows)
        window_last = np.repeat(last, n_windows) - k * stride
        window_first = np.maximum(user_first, window_last - window + 1)
        new_first = np.maximum(user_first, window_last - stride + 1)
        lengths = window_last - window_first + 1
        context = None if stride == window else new_first - window_first
        width = None if window == self.max_seq_length else window
        return SampleSet(window_first - 1, lengths, None, user_rep, context, width)

    # ----------------------------------------------------------------------------- batches
    def _gather(
        self, starts: torch.Tensor, lengths: torch.Tensor, source: torch.Tensor, width: int | None = None
    ) -> torch.Tensor:
        """(B, width or L): ``source`` at ``starts + position`` where position < ``lengths``, its pad value after."""
        positions = torch.arange(width or self.max_seq_length)
        index = starts[:, None] + positions[None, :]
        index = torch.where(positions[None, :] < lengths[:, None], index, torch.full_like(index, self.pad_index))
        return source[index]

    def batch(self, samples: SampleSet, rows: np.ndarray | torch.Tensor) -> Batch:
        """The :class:`Batch` of the samples at ``rows`` (on the CPU)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        starts = torch.from_numpy(samples.starts)[rows]
        lengths = torch.from_numpy(samples.lengths)[rows]
        width = samples.width
        if samples.targets is not None:
            target_events = torch.from_numpy(samples.targets)[rows]
            target, target_time = self.items[target_events], self.timestamps[target_events]
        else:
            target = self._gather(starts + 1, lengths, self.items, width)
            target_time = self._gather(starts + 1, lengths, self.timestamps, width)
            if samples.context is not None:  # context positions: history for the window's targets, no loss
                context = torch.from_numpy(samples.context)[rows]
                target = target.masked_fill(torch.arange(target.shape[1])[None, :] < context[:, None], 0)
        return Batch(
            regime=samples.regime,
            item_seq=self._gather(starts, lengths, self.items, width),
            item_seq_len=lengths.clone(),
            timestamps=self._gather(starts, lengths, self.timestamps, width),
            target=target,
            user=torch.from_numpy(samples.users)[rows],
            target_time=target_time,
        )

    def iterate(
        self, samples: SampleSet, batch_size: int, *, generator: torch.Generator | None = None, skip: int = 0
    ) -> Iterator[Batch]:
        """Batches over all samples, shuffled by ``generator`` when one is given; the first ``skip`` batches of
        that order are left out without being built (an epoch continued where a limit stopped it)."""
        n = len(samples)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for begin in range(skip * batch_size, n, batch_size):
            yield self.batch(samples, order[begin : begin + batch_size])

    def history_mask_indices(self, samples: SampleSet, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) pairs of every earlier event of each sample's user, for masking history.

        Only for one-target samples; the target item itself is never masked.
        """
        if samples.targets is None:
            raise ValueError("history masking needs one-target (prefix) samples")
        offsets = self.interactions.offsets
        row_list, item_list = [], []
        for position, row in enumerate(rows.tolist()):
            begin = offsets[samples.users[row] - 1]
            end = samples.targets[row]
            items = self.interactions.items[begin:end]
            items = items[items != self.interactions.items[end]]
            row_list.append(np.full(len(items), position))
            item_list.append(items)
        return torch.from_numpy(np.concatenate(row_list)), torch.from_numpy(np.concatenate(item_list))


def _ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(c) for c in counts."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
