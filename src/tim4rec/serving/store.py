"""Users' events and streaming states: a database keeps what was acknowledged, an LRU cache keeps states warm.

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

The database (:mod:`tim4rec.serving.databases`: an SQLite file, or PostgreSQL shared by replicas) may
be written by other processes: before a cached state answers, the store compares the user's stored
event count with the state's and steps the missing events (or rebuilds the state when one of them is
late). ``sources`` counts where each state came from: ``warm`` (cached and current), ``caught_up``,
``loaded`` (a stored state) and ``rebuilt``.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tim4rec.models.base import StreamState
from tim4rec.serving.databases import Row, open_database
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

#: where a state that answers came from (the ``sources`` counts)
SOURCES = ("warm", "caught_up", "loaded", "rebuilt")


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
    #: how many of the user's stored events it holds (the database's sequence numbers below this one)
    stored: int = 0
    #: ``seen`` as a long tensor, kept beside the set so that a recommendation does not convert the set
    seen_ids: torch.Tensor | None = None

    def seen_tensor(self) -> torch.Tensor:
        """``seen`` as a long tensor (built once per state)."""
        if self.seen_ids is None:
            self.seen_ids = torch.tensor(list(self.seen), dtype=torch.long)
        return self.seen_ids


class UserStore:
    """Events in a database (``path``: an SQLite file, None: in memory, or a ``postgresql://`` URL), states in
    an LRU cache of ``cache_size`` users.

    ``compile_step``: compile the model's one-event step (:class:`~tim4rec.serving.step.StreamingStep`)
    now, which takes seconds once and makes each event several times cheaper; ``step_cache``: a folder that
    keeps its compiled library between starts (keyed by the model's fingerprint). ``timings`` holds the
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
        step_cache: Path | None = None,
    ):
        nonnegative_int("cache_size", cache_size)
        self.db = open_database(path)
        self.recommender = recommender
        self.model = recommender.model
        self.fingerprint = recommender.saved.fingerprint()
        self.step = StreamingStep(self.model, compile=compile_step, library_cache=step_cache, key=self.fingerprint)
        self.step.warm_up()
        self.timings: dict[str, float] = {}
        self.cache_size = cache_size
        self.cache: OrderedDict[str, UserState] = OrderedDict()
        self.lock = threading.RLock()
        self.sources = dict.fromkeys(SOURCES, 0)
        #: called with a source's name each time a state answers from it (the service's metrics)
        self.on_source = None

    # -- history ---------------------------------------------------------------------------------------------
    def stored_events(self, user: str) -> list[Event]:
        """The user's stored events in time order; a row whose time is not valid (written by another
        program) is left out with a logged notice."""
        return _in_time_order(user, self.db.events(user))

    def history(self, user: str) -> list[Event]:
        """The user's dataset events, then the stored ones, in time order (stable: dataset events first)."""
        return self._history(user, self.db.events(user))

    def _history(self, user: str, rows: list[Row]) -> list[Event]:
        return sorted(self.recommender.user_history(user) + _in_time_order(user, rows), key=lambda event: event[1])

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
        items, times = items.to(device), times.to(device)
        for position in range(len(items)):
            step_hidden, state = self.step(state, items[position : position + 1], times[position : position + 1])
            hidden = step_hidden[0]
        new = list(dict.fromkeys(item for item in items.tolist() if item not in current.seen))  # in order, once
        seen, seen_ids = current.seen, current.seen_ids
        if new:  # a new set (the cached state keeps its own until this one replaces it)
            seen = seen | set(new)
            seen_ids = None if seen_ids is None else torch.cat([seen_ids, torch.tensor(new, dtype=torch.long)])
        return UserState(current.events + len(items), max(current.last_time, last_time), state, hidden, seen,
                         current.unknown + encoded.unknown, seen_ids=seen_ids)  # fmt: skip

    def _rebuild(self, user: str, rows: list[Row] | None = None) -> UserState:
        """The state from the user's whole history (``rows``: the stored events, when just read)."""
        rows = self.db.events(user) if rows is None else rows
        history = self._history(user, rows)
        encoded = self.recommender.encode(history)
        last_time = history[-1][1] if history else float("-inf")
        stored = _next_seq(rows)
        if not self._streams(len(encoded.items)):
            seen = set(encoded.items.tolist())
            return UserState(len(encoded.items), last_time, None, None, seen, encoded.unknown, stored)
        state = self._feed(UserState(0, float("-inf"), None, None, set(), []), encoded, last_time)
        state.stored = stored
        return state

    def _advance(self, user: str, current: UserState, rows: list[Row]) -> tuple[UserState, str]:
        """``current`` brought up to the stored ``rows`` that follow it (``seq`` from ``current.stored``, in
        order): stepped through them when they are in time order after its last event and the model streams
        that far, else rebuilt from the whole history; and which of the two it was."""
        times = [current.last_time] + [when for _, _, when in rows]
        in_order = all(time_problem(when) is None and earlier <= when for earlier, when in zip(times, times[1:]))
        if not in_order or (current.state is None and current.events > 0):
            return self._rebuild(user), "rebuilt"
        encoded = self.recommender.encode([(item, when) for _, item, when in rows])
        if not self._streams(current.events + len(encoded.items)):
            return self._rebuild(user), "rebuilt"
        state = self._feed(current, encoded, times[-1])
        state.stored = _next_seq(rows, current.stored)
        return state, "caught_up"

    def _load(self, user: str) -> UserState:
        """The user's state, up to date with the database: cached (stepped through the events that other
        processes stored meanwhile), else stored (if of this model, complete and readable), else rebuilt
        from the events."""
        if user in self.cache:
            self.cache.move_to_end(user)
            state = self.cache[user]
            rows = self.db.events(user, since=state.stored)  # what other processes stored meanwhile
            if not rows:
                return self._answering(state, "warm")
            state, source = self._advance(user, state, rows)
            self._remember(user, state)
            return self._answering(state, source)
        rows = self.db.events(user)
        encoded = self.recommender.encode(self._history(user, rows))
        row = self.db.load_state(user)
        state, source = None, "loaded"
        if row is not None and row[0] == self.fingerprint and row[1] == len(encoded.items):
            state = self._decode(user, row[2], set(encoded.items.tolist()), encoded.unknown)
        if state is None:
            state, source = self._rebuild(user, rows), "rebuilt"
        state.stored = _next_seq(rows)
        self._remember(user, state)
        return self._answering(state, source)

    def _answering(self, state: UserState, source: str) -> UserState:
        self.sources[source] += 1
        if self.on_source is not None:
            self.on_source(source)
        return state

    def _decode(self, user: str, blob: bytes, seen: set[int], unknown: list[str]) -> UserState | None:
        """A stored state blob (tensors and plain data only: it never runs code), or None with a logged
        notice when it cannot be read or does not fit the model."""
        try:
            # stored on the CPU (whatever device wrote them), used on this model's device
            saved = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
            device = self.recommender.device
            stream = StreamState(saved["tensors"]).to(device) if saved["tensors"] else None
            hidden = saved["hidden"].to(device) if isinstance(saved["hidden"], torch.Tensor) else saved["hidden"]
            state = UserState(int(saved["events"]), float(saved["last_time"]), stream, hidden, seen, unknown)
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
        self.db.save_states([row for row in [self._state_row(user, state)] if row is not None])

    def _state_row(self, user: str, state: UserState) -> tuple[str, str, int, bytes] | None:
        if state.state is None:
            return None
        buffer = io.BytesIO()
        hidden = None if state.hidden is None else state.hidden.cpu()  # None: no known event yet
        torch.save({"tensors": state.state.to("cpu").tensors, "hidden": hidden, "events": state.events,
                    "last_time": state.last_time}, buffer)  # fmt: skip
        return user, self.fingerprint, state.events, buffer.getvalue()

    # -- the public operations -------------------------------------------------------------------------------
    def observe(self, user: str, events: Sequence[Event]) -> dict[str, Any]:
        """Store ``events`` of ``user`` durably, then update the state; returns counts and unknown item ids.
        Every event is checked (:func:`~tim4rec.serving.recommender.parse_events`) before any is stored."""
        user = _user_id(user)
        checked = sorted(parse_events(events, "events"), key=lambda event: event[1])
        with self.lock:
            current = self._load(user)
            started = time.perf_counter()
            appended = self.db.append(user, checked)  # one transaction: durable when it returns
            stored = time.perf_counter()
            earlier = max(current.last_time, float("-inf") if appended.last_time is None else appended.last_time)
            late = bool(checked) and checked[0][1] < earlier
            if appended.first_seq == current.stored:  # nobody else stored events for this user meanwhile
                rows = [(appended.first_seq + k, item, when) for k, (item, when) in enumerate(checked)]
            else:
                rows = self.db.events(user, since=current.stored)
            state, _ = self._advance(user, current, rows)
            self._remember(user, state)
            self.timings.update(store=(stored - started) * 1e3, step=(time.perf_counter() - stored) * 1e3)
        unknown = [item for item, _ in checked if item not in self.recommender.item_ids]
        return {"stored": len(checked), "unknown_items": unknown, "late": late, "events": state.events}

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
                seen, unknown = (state.seen_tensor() if exclude_seen else ()), list(state.unknown)
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
            try:
                rows = [self._state_row(user, state) for user, state in self.cache.items()]
                self.db.save_states([row for row in rows if row is not None])
            finally:
                self.db.close()


def _user_id(user: object) -> str:
    """A user id as text (strings and integers), else a :class:`HistoryError` naming ``user``."""
    if isinstance(user, bool) or not isinstance(user, (str, int)) or str(user).strip() == "":
        raise HistoryError(f"user: expected a user id (a non-empty string), got {user!r:.80}")
    return str(user)


def _next_seq(rows: list[Row], default: int = 0) -> int:
    """The sequence number after the last of ``rows`` (``default`` when there are none)."""
    return max((seq for seq, _, _ in rows), default=default - 1) + 1


def _in_time_order(user: str, rows: list[Row]) -> list[Event]:
    """Stored rows as events in time order (ties in the order stored); a row whose time is not valid (written
    by another program) is left out with a logged notice."""
    valid = [row for row in rows if time_problem(row[2]) is None]
    if len(valid) < len(rows):
        logger.warning("user %r: %d stored event(s) with invalid times left out", user, len(rows) - len(valid))
    return [(item, when) for _, item, when in sorted(valid, key=lambda row: (row[2], row[0]))]
