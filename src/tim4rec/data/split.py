"""Splits: which events of each user are training, validation and test targets.

A split looks only at the time-sorted :class:`~tim4rec.data.preprocess.Interactions` and returns a
:class:`TargetIndex`: for every user that takes part, the flat positions (into
``interactions.items``) of the first and last training target and of the validation and test
target. A target's history is always every earlier event of the same user, so no split ever
lets a model see the event it predicts.

- :class:`LeaveOneOut` (the protocol of the papers): per user with events ``e_0 .. e_{n-1}``,
  test ``e_{n-1}``, validation ``e_{n-2}``, training targets ``e_1 .. e_{n-3}``; users with fewer
  than 3 events are left out.
- :class:`TemporalSplit` (for one's own logs, where the future must not leak into training): one
  global cut time; training targets are the events before it (each user's first event being
  history only), and each user's first event at or after the cut is validated, the next one
  tested. Users with no event before the cut are not evaluated (they have no history).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tim4rec.data.preprocess import Interactions
from tim4rec.errors import ConfigError, DataError

NONE = -1  # "no such target" in TargetIndex


@dataclass(frozen=True)
class TargetIndex:
    """Flat positions of each user's targets; arrays of shape (U,) over the users that take part."""

    users: np.ndarray  # user ids 1..n_users
    train_first: np.ndarray  # first training target; train_last < train_first: none
    train_last: np.ndarray  # last training target (inclusive)
    valid: np.ndarray  # the validation target, or NONE
    test: np.ndarray  # the test target, or NONE
    description: str = ""

    def evaluation_targets(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(users, flat target positions) of ``split``, ``"valid"`` or ``"test"``."""
        if split not in ("valid", "test"):
            raise ValueError(f"unknown evaluation split {split!r}; expected 'valid' or 'test'")
        targets = self.valid if split == "valid" else self.test
        has = targets != NONE
        return self.users[has], targets[has]


class LeaveOneOut:
    """Last event = test, second-to-last = validation, the rest train (users with >= 3 events)."""

    name = "leave_one_out"

    def __call__(self, interactions: Interactions) -> TargetIndex:
        lengths = interactions.lengths
        users = np.flatnonzero(lengths >= 3) + 1
        if len(users) == 0:
            raise DataError(f"{interactions.label}: every user has fewer than 3 events: leave-one-out needs at least 3")
        ends = interactions.offsets[users]
        return TargetIndex(
            users=users,
            train_first=interactions.offsets[users - 1] + 1,
            train_last=ends - 3,
            valid=ends - 2,
            test=ends - 1,
            description="leave-one-out",
        )


class TemporalSplit:
    """Events before ``cut`` (unix seconds) train; each user's first event at or after it is
    validated, the next one tested. ``cut=None`` takes the ``quantile`` of all event times."""

    name = "temporal"

    def __init__(self, cut: float | None = None, quantile: float = 0.9):
        if cut is None and not 0 < quantile < 1:
            raise ConfigError(f"temporal_cut_quantile: expected a number in (0, 1), got {quantile!r}")
        self.cut, self.quantile = cut, quantile

    def cut_time(self, interactions: Interactions) -> float:
        if self.cut is not None:
            return float(self.cut)
        return float(np.quantile(interactions.timestamps, self.quantile))

    def __call__(self, interactions: Interactions) -> TargetIndex:
        cut = self.cut_time(interactions)
        offsets = interactions.offsets
        user_of_event = np.repeat(np.arange(1, interactions.n_users + 1), interactions.lengths)
        before = np.bincount(user_of_event[interactions.timestamps < cut], minlength=interactions.n_users + 1)[1:]
        lengths = interactions.lengths
        users = np.flatnonzero(before >= 1) + 1  # a history before the cut
        first, k, n = offsets[users - 1], before[users - 1], lengths[users - 1]
        valid = np.where(k < n, first + k, NONE)
        test = np.where(k + 1 < n, first + k + 1, NONE)
        where = f"temporal split at {cut:.0f} s"
        if not (valid != NONE).any() or not (test != NONE).any():
            missing = "an event" if not (valid != NONE).any() else "two events"
            raise DataError(
                f"{interactions.label}, {where}: no user has {missing} after the cut and one before it;"
                " choose an earlier temporal_cut (or a lower temporal_cut_quantile)"
            )
        return TargetIndex(users, first + 1, first + k - 1, valid, test, description=where)


SPLITS = (LeaveOneOut.name, TemporalSplit.name)


def make_split(name: str, *, cut: float | None = None, quantile: float = 0.9) -> LeaveOneOut | TemporalSplit:
    """The split called ``name`` (the ``split`` config key); an unknown name is an error."""
    if name == LeaveOneOut.name:
        return LeaveOneOut()
    if name == TemporalSplit.name:
        return TemporalSplit(cut, quantile)
    raise ConfigError(f"split: expected '{LeaveOneOut.name}' or '{TemporalSplit.name}', got {name!r}")
