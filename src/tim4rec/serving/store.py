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
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tim4rec.errors import Tim4RecError
from tim4rec.models.base import StreamState
from tim4rec.serving.recommender import (
    EncodedHistory,
    Event,
    HistoryError,
    Query,
    Recommendation,
    Recommender,
    check_k,
    parse_events,
    resolve_request_time,
)
from tim4rec.serving.step import StreamingStep
from tim4rec.times import time_problem, whole_seconds
from tim4rec.values import nonnegative_int

logger = logging.getLogger(__name__)

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
    #: the latest event's time as given (fractions of a second kept: they decide whether an event is late)
    last_time: float
    state: StreamState | None
    hidden: torch.Tensor | None
    #: the model ids and the unknown raw ids of the user's history, kept so that a recommendation
    #: from the state never reads the history again
    seen: set[int]
    unknown: list[str]


class UserStore:
    """Events in SQLite (``path``; None: in memory), states in an LRU cache of ``cache_size`` users.

    ``compile_step``: compile the model's one-event step (:class:`~tim4rec.serving.step.StreamingStep`)
    now, which takes seconds once and makes each event several times cheaper. ``timings`` holds the
    milliseconds of the last operations' parts: ``store`` (the SQLite write of ``observe``), ``step``
    (the model's steps) and ``rank`` (read-out and ranking of ``recommend`` from a state).
    """

    def __init__(
        self,
        recommender: Recommender,
        path: str | Path | None = None,
        cache_size: int = 10_000,
        *,
        compile_step: bool = False,
    ):
        nonnegative_int("cache_size", cache_size)
        self.db = _open_database(path)
        self.recommender = recommender
        self.model = recommender.model
        self.step = StreamingStep(self.model, compile=compile_step)
        self.step.warm_up()
        self.timings: dict[str, float] = {}
        self.fingerprint = recommender.saved.fingerprint()
        self.cache_size = cache_size
        self.cache: OrderedDict[str, UserState] = OrderedDict()
        self.lock = threading.RLock()

    # -- history ---------------------------------------------------------------------------------------------
    def stored_events(self, user: str) -> list[Event]:
        """The user's stored events in time order; a row whose time is not valid (written by another
        program) is left out with a logged notice."""
        rows = self.db.execute("SELECT item, time FROM events WHERE user = ? ORDER BY time, seq", (user,)).fetchall()
        events = [(item, time) for item, time in rows if time_problem(time) is None]
        if len(events) < len(rows):
            logger.warning("user %r: %d stored event(s) with invalid times left out", user, len(rows) - len(events))
        return events

    def history(self, user: str) -> list[Event]:
        """The user's dataset events, then the stored ones, in time order (stable: dataset events first)."""
        return sorted(self.recommender.user_history(user) + self.stored_events(user), key=lambda event: event[1])

    def _streams(self, events: int) -> bool:
        model = self.model
        return model.streaming and (not model.fixed_length or events <= model.max_seq_length)

    # -- states ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _feed(self, current: UserState, encoded: EncodedHistory, last_time: float) -> UserState:
        """Step the model through encoded events (in time order) from ``current``; ``last_time``: the
        latest of their times as given."""
        items, times = encoded.items, encoded.times
        state, hidden = current.state, current.hidden
        device = self.recommender.device
        if state is None:
            state = self.model.init_state(1)
        for item, when in zip(items.tolist(), times.tolist()):
            step_hidden, state = self.step(
                state, torch.tensor([item], device=device), torch.tensor([when], device=device)
            )
            hidden = step_hidden[0]
        seen, unknown = current.seen | set(items.tolist()), current.unknown + encoded.unknown
        return UserState(current.events + len(items), max(current.last_time, last_time), state, hidden, seen, unknown)

    def _rebuild(self, user: str) -> UserState:
        history = self.history(user)
        encoded = self.recommender.encode(history)
        last_time = history[-1][1] if history else float("-inf")
        empty = UserState(0, float("-inf"), None, None, set(), [])
        if not self._streams(len(encoded.items)):
            return UserState(len(encoded.items), last_time, None, None, set(encoded.items.tolist()), encoded.unknown)
        return self._feed(empty, encoded, last_time)

    def _load(self, user: str) -> UserState:
        """The user's state: cached, else stored (if of this model, complete and readable), else rebuilt
        from the events."""
        if user in self.cache:
            self.cache.move_to_end(user)
            return self.cache[user]
        encoded = self.recommender.encode(self.history(user))
        row = self.db.execute("SELECT fingerprint, events, blob FROM states WHERE user = ?", (user,)).fetchone()
        state = None
        if row is not None and row[0] == self.fingerprint and row[1] == len(encoded.items):
            state = self._decode(user, row[2], set(encoded.items.tolist()), encoded.unknown)
        if state is None:
            state = self._rebuild(user)
        self._remember(user, state)
        return state

    def _decode(self, user: str, blob: bytes, seen: set[int], unknown: list[str]) -> UserState | None:
        """A stored state blob (tensors and plain data only: it never runs code), or None with a logged
        notice when it cannot be read or does not fit the model."""
        try:
            saved = torch.load(io.BytesIO(blob), weights_only=True)
            stream = StreamState(saved["tensors"]) if saved["tensors"] else None
            state = UserState(int(saved["events"]), float(saved["last_time"]), stream, saved["hidden"], seen, unknown)
            problem = self._state_problem(state)
        except Exception as error:  # noqa: BLE001 -- any unreadable blob is rebuilt, whatever the reason
            problem = f"{type(error).__name__}: {str(error)[:200]}"
        if problem is None:
            return state
        logger.warning("user %r: the stored state cannot be used (%s); rebuilt from the events", user, problem)
        return None

    def _state_problem(self, state: UserState) -> str | None:
        """Why a decoded state does not fit this model, or None."""
        template = self.model.init_state(1).tensors
        tensors = state.state.tensors if state.state is not None else {}
        if set(tensors) != set(template):
            return "its tensors are not the model's"
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != template[name].dtype:
                return f"tensor {name!r} has the wrong type"
            if tensor.dim() != template[name].dim() or tensor.shape[0] != 1:
                return f"tensor {name!r} has the wrong shape"
        width = self.model.output_layer()[0].shape[1]
        if not isinstance(state.hidden, torch.Tensor) or tuple(state.hidden.shape) != (width,):
            return "its read-out is not a vector of the model's width"
        if not all(bool(torch.isfinite(t).all()) for t in [state.hidden, *tensors.values()] if t.is_floating_point()):
            return "it holds values that are not finite"
        if state.last_time != float("-inf") and time_problem(state.last_time) is not None:
            return "its last time is not valid"
        return None

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
        """Store ``events`` of ``user`` durably, then update the state; returns counts and unknown item ids.
        Every event is checked (:func:`~tim4rec.serving.recommender.parse_events`) before any is stored."""
        user = _user_id(user)
        checked = sorted(parse_events(events, "events"), key=lambda event: event[1])
        with self.lock:
            current = self._load(user)
            next_seq = self.db.execute(
                "SELECT COALESCE(MAX(seq), -1) + 1 FROM events WHERE user = ?", (user,)
            ).fetchone()[0]
            started = time.perf_counter()
            with self.db:  # one transaction; synchronous=FULL: on disk when it commits
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO events (user, time, seq, item) VALUES (?, ?, ?, ?)",
                    [(user, when, next_seq + k, item) for k, (item, when) in enumerate(checked)],
                )
            stored = time.perf_counter()
            encoded = self.recommender.encode(checked)
            late = bool(checked) and checked[0][1] < current.last_time
            total = current.events + len(encoded.items)
            if late or not self._streams(total) or (current.state is None and current.events > 0):
                state = self._rebuild(user)
            else:
                state = self._feed(current, encoded, checked[-1][1] if checked else current.last_time)
            self._remember(user, state)
            self.timings.update(store=(stored - started) * 1e3, step=(time.perf_counter() - stored) * 1e3)
        return {"stored": len(checked), "unknown_items": encoded.unknown, "late": late, "events": state.events}

    def recommend(
        self, user: str, k: int = 10, exclude_seen: bool = True, request_time: float | None = None
    ) -> Recommendation:
        """The top ``k`` items for ``user`` from the user's state (streaming models) or stored history;
        ``request_time``: when the list is for (None: now; not before the user's last event), read by a
        model trained with ``request_time`` (the gap enters the read-out only: the state stays as it is)."""
        user, k = _user_id(user), check_k(k)
        query = Query((), k, exclude_seen, request_time=request_time)
        query.check()
        with self.lock:
            state = self._load(user)
            when = resolve_request_time(query, None if state.events == 0 and not state.unknown else state.last_time)
            if state.hidden is None or not self._streams(state.events):
                history = self.history(user)
            else:
                history, hidden = None, state.hidden
                seen, unknown = (state.seen if exclude_seen else ()), list(state.unknown)
                if self.model.reads_request_time:  # the model's state keeps its last event's time
                    gap = torch.tensor([whole_seconds(when)]) - state.state["last_time"].cpu()
                    hidden = self.model.at_request(hidden[None], gap.to(hidden.device))[0]
        if history is not None:
            answer = self.recommender.recommend(history, k, exclude_seen, request_time=when)
            answer.metadata["source"] = "recomputed from the history"
            return answer
        started = time.perf_counter()
        ranked = self.recommender.rank(hidden, k, seen=seen)
        self.timings["rank"] = (time.perf_counter() - started) * 1e3
        metadata = {"model": self.recommender.saved.model, "events": state.events, "events_used": state.events,
                    "truncated": False, "whole_history": True, "source": "streaming state",
                    "request_time": when}  # fmt: skip
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


def _user_id(user: object) -> str:
    """A user id as text (strings and integers), else a :class:`HistoryError` naming ``user``."""
    if isinstance(user, bool) or not isinstance(user, (str, int)) or str(user).strip() == "":
        raise HistoryError(f"user: expected a user id (a non-empty string), got {user!r:.80}")
    return str(user)


def _open_database(path: str | Path | None) -> sqlite3.Connection:
    """The store's SQLite database (``path``; None: in memory), schema created; a :class:`Tim4RecError`
    naming the file when it cannot be opened or is not such a database."""
    if path and not Path(path).parent.is_dir():
        raise Tim4RecError(f"{path}: cannot open the user store: folder {Path(path).parent} does not exist")
    try:
        db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False, isolation_level=None)
        if path:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
    except sqlite3.Error as error:
        raise Tim4RecError(f"{path}: cannot open as the user store's SQLite database ({error})") from None
    return db
