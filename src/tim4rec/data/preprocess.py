"""From a raw (user, item, timestamp) frame to :class:`Interactions`.

Steps, matching RecBole 1.2's sequential pipeline:

1. k-core filtering of users and items, repeated until stable (RecBole's
   ``user_inter_num_interval`` / ``item_inter_num_interval``, default ``[5,inf)``);
2. ids 1..n assigned in order of first appearance in the file after filtering (0 = padding),
   with maps back to the dataset's own ids;
3. each user's events sorted by timestamp, stable on ties (file order). ``time_order="exact"``
   compares int64 seconds; ``time_order="recbole"`` compares the float32 rounding that RecBole
   1.2 keeps (64-second steps near 1e9), so published tables can be matched like for like;
4. the times the models read: ``time_values="exact"`` keeps whole seconds, ``time_values="recbole"``
   the float32 rounding RecBole's models read (so TiM4Rec's and TiSASRec's gaps are RecBole's too).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tim4rec.errors import ConfigError, DataError

TIME_ORDERS = ("exact", "recbole")
#: RecBole's k-core interval: users and items with at least 5 interactions
FIVE_CORE = "[5,inf)"


@dataclass
class Interactions:
    """Per-user, time-sorted interaction sequences in CSR form.

    User ``u`` (1..n_users) owns ``items[offsets[u - 1]:offsets[u]]`` and the matching
    ``timestamps``; item ids run 1..n_items, 0 is padding.
    """

    items: np.ndarray  # (N,) int64 item ids 1..n_items
    timestamps: np.ndarray  # (N,) int64 seconds
    offsets: np.ndarray  # (n_users + 1,) int64, offsets[0] = 0
    user_tokens: np.ndarray  # (n_users + 1,) object: dataset ids, index 0 = "[PAD]"
    item_tokens: np.ndarray  # (n_items + 1,) object: dataset ids, index 0 = "[PAD]"
    time_order: str = "exact"
    time_values: str = "exact"
    fractional_seconds: bool = False  # the file's times had fractions of a second (used for ordering only)
    source: str = ""
    filtering: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How error messages name these data: their source file, or "dataset" when they have none."""
        return self.source or "dataset"

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_tokens) - 1

    @property
    def n_interactions(self) -> int:
        return int(len(self.items))

    @property
    def lengths(self) -> np.ndarray:
        """(n_users,) number of events per user."""
        return np.diff(self.offsets)

    def fingerprint(self) -> dict[str, Any]:
        """The counts of users, items and interactions and a SHA-256 over everything a model trains on
        (the event arrays and the dataset's user and item ids): a resumed run compares it with its
        checkpoint's. About 10 ms for a million events."""
        counts = {"users": self.n_users, "items": self.n_items, "interactions": self.n_interactions}
        digest = hashlib.sha256(json.dumps(counts).encode())  # the counts delimit the arrays below
        for array in (self.items, self.timestamps, self.offsets):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).data)
        for tokens in (self.user_tokens, self.item_tokens):
            digest.update(json.dumps([str(token) for token in tokens]).encode())
        return {**counts, "sha256": digest.hexdigest()}

    def stats(self) -> dict:
        lengths = self.lengths
        percentiles = {f"p{q}": float(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 95, 99)}
        return {
            "source": self.source,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "density": self.n_interactions / max(1, self.n_users * self.n_items),
            "sequence_length": {
                "min": int(lengths.min()),
                "mean": float(lengths.mean()),
                **percentiles,
                "max": int(lengths.max()),
            },
            "time_order": self.time_order,
            "time_values": self.time_values,
            "time_unit": "unix seconds"
            + (" (fractions of a second used for ordering)" if self.fractional_seconds else ""),
            "filtering": self.filtering,
        }


_INTERVAL = re.compile(r"^\s*([\[\(])\s*([^,]*)\s*,\s*([^\]\)]*)\s*([\]\)])\s*$")


def parse_interval(text: str | int | None, key: str) -> tuple[float, float]:
    """Parse RecBole's interval syntax (``"[5,inf)"``) into inclusive bounds (lo, hi).

    An integer k means ``[k,inf)``; ``None`` means no bound. NaN bounds, a lower bound of ``inf`` and
    an interval that holds no count (``[5,3]``, ``(5,5)``) are refused: NaN compares false, so it
    would keep every user silently, and the others keep none.
    """
    if text is None:
        return 0.0, math.inf
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _checked_bounds(float(text), math.inf, text, key)
    match = _INTERVAL.match(str(text))
    if not match:
        raise ConfigError(f'{key}: expected an interval like "[5,inf)", got {text!r}')
    left, low, high, right = match.groups()
    try:
        lo = float(low) if low.strip() else 0.0
        hi = float(high) if high.strip() else math.inf
    except ValueError:
        raise ConfigError(f"{key}: expected numbers in the interval, got {text!r}") from None
    _checked_bounds(lo, hi, text, key)
    if left == "(" and math.isfinite(lo):
        lo = math.floor(lo) + 1
    if right == ")" and math.isfinite(hi):
        hi = math.ceil(hi) - 1
    return _checked_bounds(lo, hi, text, key)


def _checked_bounds(lo: float, hi: float, text: object, key: str) -> tuple[float, float]:
    """(lo, hi), or a ConfigError naming ``key`` when they bound no count of interactions."""
    if math.isnan(lo) or math.isnan(hi):
        raise ConfigError(f"{key}: an interval bound is NaN in {text!r}")
    if lo == math.inf:
        raise ConfigError(f"{key}: the lower bound is infinite in {text!r}, so no count is inside the interval")
    if lo > hi:
        raise ConfigError(f"{key}: the interval {text!r} holds no count (its lower bound is above its upper bound)")
    return lo, hi


def k_core(
    raw: pd.DataFrame, user_bounds: tuple[float, float], item_bounds: tuple[float, float]
) -> tuple[pd.DataFrame, int]:
    """Drop users and items whose counts fall outside their bounds, repeated until stable.

    Returns the kept rows (file order kept) and the number of rounds it took.
    """
    user_codes, _ = pd.factorize(raw["user"])
    item_codes, _ = pd.factorize(raw["item"])
    keep = np.ones(len(raw), dtype=bool)
    rounds = 0
    while True:
        rounds += 1
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max() + 1)
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max() + 1)
        bad_user = (user_counts < user_bounds[0]) | (user_counts > user_bounds[1])
        bad_item = (item_counts < item_bounds[0]) | (item_counts > item_bounds[1])
        drop = keep & (bad_user[user_codes] | bad_item[item_codes])
        if not drop.any():
            break
        keep &= ~drop
    return raw[keep], rounds


def build_interactions(
    raw: pd.DataFrame,
    *,
    user_inter_num_interval: str | int | None = FIVE_CORE,
    item_inter_num_interval: str | int | None = FIVE_CORE,
    time_order: str = "exact",
    time_values: str = "exact",
    source: str | Path = "",
) -> Interactions:
    """Filter, re-index and time-sort a raw frame (columns user, item, timestamp)."""
    if time_order not in TIME_ORDERS:
        raise ConfigError(f"time_order: expected one of {TIME_ORDERS}, got {time_order!r}")
    if time_values not in TIME_ORDERS:
        raise ConfigError(f"time_values: expected one of {TIME_ORDERS}, got {time_values!r}")
    user_bounds = parse_interval(user_inter_num_interval, "user_inter_num_interval")
    item_bounds = parse_interval(item_inter_num_interval, "item_inter_num_interval")
    before = {"users": int(raw["user"].nunique()), "items": int(raw["item"].nunique()), "interactions": len(raw)}
    kept, rounds = k_core(raw, user_bounds, item_bounds)
    if len(kept) == 0:
        raise DataError(
            f"{source or 'dataset'}: filtering (users {user_inter_num_interval}, items "
            f"{item_inter_num_interval}) left no interactions; {before['interactions']} before filtering"
        )
    user_index, user_tokens = pd.factorize(kept["user"])  # first appearance order
    item_index, item_tokens = pd.factorize(kept["item"])
    times = kept["timestamp"].to_numpy()  # int64 seconds, or float64 with fractions of a second
    fractional = times.dtype.kind == "f"
    timestamps = np.floor(times).astype(np.int64) if fractional else times.astype(np.int64)
    if time_values == "recbole":  # RecBole's float32 timestamps, as whole seconds
        timestamps = times.astype(np.float32).astype(np.int64)
    sort_key = times.astype(np.float32) if time_order == "recbole" else times  # fractions order same-second events
    order = np.argsort(sort_key, kind="stable")
    order = order[np.argsort(user_index[order], kind="stable")]
    n_users = len(user_tokens)
    counts = np.bincount(user_index, minlength=n_users)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pad = np.array(["[PAD]"], dtype=object)
    return Interactions(
        items=(item_index[order] + 1).astype(np.int64),
        timestamps=timestamps[order],
        offsets=offsets,
        user_tokens=np.concatenate([pad, np.asarray(user_tokens, dtype=object)]),
        item_tokens=np.concatenate([pad, np.asarray(item_tokens, dtype=object)]),
        time_order=time_order,
        time_values=time_values,
        fractional_seconds=bool(fractional),
        source=str(source),
        filtering={
            "user_inter_num_interval": str(user_inter_num_interval),
            "item_inter_num_interval": str(item_inter_num_interval),
            "rounds": rounds,
            "before": before,
        },
    )
