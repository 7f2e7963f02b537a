"""Users' events and streaming states: SQLite keeps what was acknowledged, an LRU cache keeps states warm.

``observe(user, events)`` stores the events (one transaction, synchronous: when it returns, a crash
loses none of them) and, for a streaming model, feeds them to the user's state one step each
(constant cost per event for the SSD, Mamba, LRU and GRU models; O(L) for attention models through
their key/value cache while the history fits in ``max_seq_length``). ``recommend(user)`` then
scores from the state without touching the history. Models that cannot stream, and attention
models past ``max_seq_length`` events, score by recomputing from the stored history.

A user of the training data starts from all of their events in the dataset; stored events come
after them. A late event (older than the user's last) is stored in time order and the state is
rebuilt from the whole history. States are written to the database when they leave the cache and
on :meth:`UserStore.close`, tagged with the model's fingerprint and the number of events they
hold: a state from another model, or one that misses events (after a crash), is rebuilt from the
events. Item ids the model does not know are stored and reported back, and do not enter the state.
"""

from __future__ import annotations

import io
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tim4rec.models.base import StreamState
from tim4rec.serving.recommender import EncodedHistory, Event, HistoryError, Recommendation, Recommender

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (user TEXT NOT NULL, time REAL NOT NULL, seq INTEGER NOT NULL, item TEXT NOT NULL,
                                   PRIMARY KEY (user, seq));
CREATE TABLE IF NOT EXISTS states (user TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, events INTEGER NOT NULL,
                                   blob BLOB NOT NULL);
"""


@dataclass
class UserState:
    """A user's streaming state after ``events`` events (known items only), and its read-out (d,)."""

    events: int
    last_time: float
    state: StreamState | None
    hidden: torch.Tensor | None
    #: the model ids and the unknown raw ids of the user's history, kept so that a recommendation
    #: from the state never reads the history again
    seen: set[int]
    unknown: list[str]


class UserStore:
    """Events in SQLite (``path``; None: in memory), states in an LRU cache of ``cache_size`` users."""

    def __init__(self, recommender: Recommender, path: str | Path | None = None, cache_size: int = 10_000):
        self.recommender = recommender
        self.model = recommender.model
        self.fingerprint = recommender.saved.fingerprint()
        self.cache_size = cache_size
        self.cache: OrderedDict[str, UserState] = OrderedDict()
        self.lock = threading.RLock()
        self.db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        if path:
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    # -- history ---------------------------------------------------------------------------------------------
    def stored_events(self, user: str) -> list[Event]:
        rows = self.db.execute("SELECT item, time FROM events WHERE user = ? ORDER BY time, seq", (user,)).fetchall()
        return [(item, time) for item, time in rows]

    def history(self, user: str) -> list[Event]:
        """The user's dataset events, then the stored ones, in time order (stable: dataset events first)."""
        return sorted(self.recommender.user_history(user) + self.stored_events(user), key=lambda event: event[1])

    def _streams(self, events: int) -> bool:
        model = self.model
        return model.streaming and (not model.fixed_length or events <= model.max_seq_length)

    # -- states ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _feed(self, current: UserState, encoded: EncodedHistory) -> UserState:
        """Step the model through encoded events (in time order) from ``current``."""
        items, times = encoded.items, encoded.times
        state, hidden = current.state, current.hidden
        device = self.recommender.device
        if state is None:
            state = self.model.init_state(1)
        for item, time in zip(items.tolist(), times.tolist()):
            hidden, state = self.model.step_hidden(
                state, torch.tensor([item], device=device), torch.tensor([time], device=device)
            )
        last = float(times[-1]) if len(times) else current.last_time
        seen, unknown = current.seen | set(items.tolist()), current.unknown + encoded.unknown
        return UserState(current.events + len(items), last, state, None if hidden is None else hidden[0], seen, unknown)

    def _rebuild(self, user: str) -> UserState:
        encoded = self.recommender.encode(self.history(user))
        empty = UserState(0, float("-inf"), None, None, set(), [])
        if not self._streams(len(encoded.items)):
            return UserState(len(encoded.items), float(encoded.times[-1]) if len(encoded.times) else empty.last_time,
                             None, None, set(encoded.items.tolist()), encoded.unknown)  # fmt: skip
        return self._feed(empty, encoded)

    def _load(self, user: str) -> UserState:
        """The user's state: cached, else stored (if of this model and complete), else rebuilt from events."""
        if user in self.cache:
            self.cache.move_to_end(user)
            return self.cache[user]
        encoded = self.recommender.encode(self.history(user))
        row = self.db.execute("SELECT fingerprint, events, blob FROM states WHERE user = ?", (user,)).fetchone()
        state = None
        if row is not None and row[0] == self.fingerprint and row[1] == len(encoded.items):
            saved = torch.load(io.BytesIO(row[2]), weights_only=True)
            stream = StreamState(saved["tensors"]) if saved["tensors"] else None
            state = UserState(saved["events"], saved["last_time"], stream, saved["hidden"],
                              set(encoded.items.tolist()), encoded.unknown)  # fmt: skip
        if state is None:
            state = self._rebuild(user)
        self._remember(user, state)
        return state

    def _remember(self, user: str, state: UserState) -> None:
        self.cache[user] = state
        self.cache.move_to_end(user)
        while len(self.cache) > self.cache_size:
            old_user, old_state = self.cache.popitem(last=False)
            self._persist(old_user, old_state)

    def _persist(self, user: str, state: UserState) -> None:
        if state.state is None:
            return
        buffer = io.BytesIO()
        torch.save({"tensors": state.state.to("cpu").tensors, "hidden": state.hidden, "events": state.events,
                    "last_time": state.last_time}, buffer)  # fmt: skip
        self.db.execute(
            "INSERT OR REPLACE INTO states (user, fingerprint, events, blob) VALUES (?, ?, ?, ?)",
            (user, self.fingerprint, state.events, buffer.getvalue()),
        )

    # -- the public operations -------------------------------------------------------------------------------
    def observe(self, user: str, events: Sequence[Event]) -> dict[str, Any]:
        """Store ``events`` of ``user`` durably, then update the state; returns counts and unknown item ids."""
        user = str(user)
        checked = []
        for position, event in enumerate(events):
            try:
                item, time = str(event[0]), float(event[1])
            except (TypeError, ValueError, IndexError):
                raise HistoryError(f"events[{position}]: expected (item id, unix time), got {event!r}") from None
            checked.append((item, time))
        checked.sort(key=lambda event: event[1])
        with self.lock:
            current = self._load(user)
            next_seq = self.db.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM events WHERE user = ?", (user,)
            ).fetchone()[0]
            with self.db:  # one transaction; synchronous=FULL: on disk when it commits
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO events (user, time, seq, item) VALUES (?, ?, ?, ?)",
                    [(user, time, next_seq + k, item) for k, (item, time) in enumerate(checked)],
                )
            encoded = self.recommender.encode(checked)
            late = bool(checked) and checked[0][1] < current.last_time
            total = current.events + len(encoded.items)
            if late or not self._streams(total) or (current.state is None and current.events > 0):
                state = self._rebuild(user)
            else:
                state = self._feed(current, encoded)
            self._remember(user, state)
        return {"stored": len(checked), "unknown_items": encoded.unknown, "late": late, "events": state.events}

    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True) -> Recommendation:
        """The top ``k`` items for ``user`` from the user's state (streaming models) or stored history."""
        user = str(user)
        with self.lock:
            state = self._load(user)
            if state.hidden is None or not self._streams(state.events):
                history = self.history(user)
            else:
                history = None
                seen, unknown = (state.seen if exclude_seen else ()), list(state.unknown)
        if history is not None:
            answer = self.recommender.recommend(history, k, exclude_seen)
            answer.metadata["source"] = "recomputed from the history"
            return answer
        ranked = self.recommender.rank(state.hidden, k, seen=seen)
        metadata = {"model": self.recommender.saved.model, "events": state.events, "events_used": state.events,
                    "truncated": False, "whole_history": True, "source": "streaming state"}  # fmt: skip
        return Recommendation(ranked, unknown, metadata)

    def cached_users(self) -> int:
        return len(self.cache)

    def close(self) -> None:
        """Write every cached state and close the database."""
        with self.lock:
            with self.db:
                for user, state in self.cache.items():
                    self._persist(user, state)
            self.db.close()
