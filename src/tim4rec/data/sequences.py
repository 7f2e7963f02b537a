"""Leave-one-out split and batching into padded (B, L) tensors.

For a user with events ``e_0 .. e_{n-1}`` (time order): the test target is ``e_{n-1}``, the
validation target ``e_{n-2}``, and the training targets are ``e_1 .. e_{n-3}``. A sample's
history is the most recent ``L`` events before its target, **right-padded** (RecBole style):
real items at positions ``0..len-1``, padding id 0 after them, timestamps 0 at padding.

Two training regimes feed the same targets:

- ``prefix``: one sample per training target (history -> target), RecBole's protocol; the loss is
  read at position ``len - 1``.
- ``causal``: the user's training events are cut into consecutive windows of at most ``L``
  targets, aligned so that the most recent window is the full one; the loss is read at every
  position of a window, each training target exactly once. Only valid for models whose output
  at position t depends on events <= t.

Validation and test batches are identical in both regimes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tim4rec.data.preprocess import Interactions
from tim4rec.errors import DataError

REGIMES = ("prefix", "causal")
Batch = dict[str, torch.Tensor]


@dataclass
class SampleSet:
    """Samples as index arrays into the flat event arrays.

    ``starts``/``lengths`` (S,) locate each input history; ``targets`` is (S,) flat indices of the
    target events for one-target samples, or ``None`` for causal windows (the targets are the
    events right after each input position).
    """

    starts: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray | None
    users: np.ndarray  # (S,) user ids 1..n_users

    def __len__(self) -> int:
        return len(self.starts)


class SequenceData:
    """Builds train / validation / test samples and turns them into batches."""

    def __init__(self, interactions: Interactions, max_seq_length: int):
        if max_seq_length < 1:
            raise DataError(f"MAX_ITEM_LIST_LENGTH must be >= 1, got {max_seq_length}")
        lengths = interactions.lengths
        short = int((lengths < 3).sum())
        if short == interactions.n_users:
            raise DataError("every user has fewer than 3 events: leave-one-out needs at least 3")
        self.interactions = interactions
        self.max_seq_length = max_seq_length
        self.items = torch.from_numpy(np.concatenate([interactions.items, [0]]))  # (N+1,) last = pad
        self.timestamps = torch.from_numpy(np.concatenate([interactions.timestamps, [0]]))
        self.pad_index = len(interactions.items)
        self.users_skipped = short
        self._usable = np.flatnonzero(lengths >= 3) + 1  # user ids with a full split

    # ----------------------------------------------------------------------------- samples
    def _one_target(self, target_index: np.ndarray, users: np.ndarray) -> SampleSet:
        user_start = self.interactions.offsets[users - 1]
        lengths = np.minimum(self.max_seq_length, target_index - user_start)
        return SampleSet(target_index - lengths, lengths, target_index, users)

    def evaluation_samples(self, split: str) -> SampleSet:
        """One sample per user: ``split`` is ``"valid"`` (target e_{n-2}) or ``"test"`` (e_{n-1})."""
        users = self._usable
        ends = self.interactions.offsets[users]
        target = ends - (2 if split == "valid" else 1)
        return self._one_target(target, users)

    def train_samples(self, regime: str) -> SampleSet:
        if regime not in REGIMES:
            raise DataError(f"unknown training regime {regime!r}; expected one of {REGIMES}")
        offsets = self.interactions.offsets
        users = self._usable
        first = offsets[users - 1] + 1  # first training target
        last = offsets[users] - 3  # last training target (inclusive)
        counts = last - first + 1
        has = counts > 0
        users, first, last, counts = users[has], first[has], last[has], counts[has]
        if regime == "prefix":
            target = np.repeat(last - counts + 1, counts) + _ranges(counts)
            return self._one_target(target, np.repeat(users, counts))
        window = self.max_seq_length
        n_windows = -(-counts // window)
        # window k (0 = most recent) of a user covers targets (last - (k+1)*L, last - k*L]
        k = _ranges(n_windows)
        user_rep = np.repeat(users, n_windows)
        window_last = np.repeat(last, n_windows) - k * window
        window_first = np.maximum(np.repeat(first, n_windows), window_last - window + 1)
        lengths = window_last - window_first + 1
        return SampleSet(window_first - 1, lengths, None, user_rep)

    def n_targets(self, samples: SampleSet) -> int:
        return int(len(samples) if samples.targets is not None else samples.lengths.sum())

    # ----------------------------------------------------------------------------- batches
    def _gather(self, starts: torch.Tensor, lengths: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.max_seq_length)
        index = starts[:, None] + positions[None, :]
        index = torch.where(positions[None, :] < lengths[:, None], index, torch.full_like(index, self.pad_index))
        return source[index]

    def batch(self, samples: SampleSet, rows: np.ndarray | torch.Tensor) -> Batch:
        """Padded tensors for the samples at ``rows``.

        Keys: ``item_seq`` (B, L) long, ``item_seq_len`` (B,) long, ``timestamps`` (B, L) long,
        ``target`` (B,) long for one-target samples or (B, L) long for causal windows (0 where no
        loss is taken), ``user`` (B,) long.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        starts = torch.from_numpy(samples.starts)[rows]
        lengths = torch.from_numpy(samples.lengths)[rows]
        batch = {
            "item_seq": self._gather(starts, lengths, self.items),
            "item_seq_len": lengths.clone(),
            "timestamps": self._gather(starts, lengths, self.timestamps),
            "user": torch.from_numpy(samples.users)[rows],
        }
        if samples.targets is not None:
            batch["target"] = self.items[torch.from_numpy(samples.targets)[rows]]
        else:
            batch["target"] = self._gather(starts + 1, lengths, self.items)
        return batch

    def iterate(
        self, samples: SampleSet, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[Batch]:
        """Batches over all samples, shuffled by ``generator`` when one is given."""
        n = len(samples)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for begin in range(0, n, batch_size):
            yield self.batch(samples, order[begin : begin + batch_size])

    def history_mask_indices(self, samples: SampleSet, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) pairs of every earlier event of each sample's user, for masking history.

        Only for one-target samples; the target item itself is never masked.
        """
        assert samples.targets is not None
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
