"""Recommendations from a saved model: raw item ids and unix times in, ranked raw item ids out.

>>> recommender = Recommender.load("runs/tim4rec/best.pt")
>>> answer = recommender.recommend([("Toy Story (1995)", 978300760), ("Heat (1995)", 978301968)], k=10)
>>> answer.items[0].item, answer.items[0].score, answer.items[0].title

A history is a list of events, oldest first, each an ``(item id as in the dataset, unix time in
seconds)`` pair or an ``{"item": ..., "time": ...}`` record; times are checked as everywhere else
(:mod:`tim4rec.times`). Item ids the model does not know are skipped and reported back
(``unknown_items``): new items are normal in production. Models with a fixed length (attention
models) see the most recent ``max_seq_length`` events; recurrent models (TiM4Rec ``causal``/``none``,
SSD4Rec, Mamba4Rec, GRU4Rec, LRURec) see the whole history; ``metadata`` says which. Items already in the history
are left out of the ranking unless ``exclude_seen=False``; ``candidates`` restricts the ranking
to the given item ids. Scores come from one batched forward for many histories
(:meth:`Recommender.recommend_batch`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tim4rec.config import Config
from tim4rec.data import Interactions
from tim4rec.data.description import DataDescription
from tim4rec.data.items import item_metadata_path, read_item_metadata
from tim4rec.errors import Tim4RecError
from tim4rec.evaluation.scoring import blocked_topk, stable_topk
from tim4rec.io import SavedModel, load_saved_model
from tim4rec.models.base import SequentialRecommender
from tim4rec.ops.precision import mixed_precision
from tim4rec.times import check_time, format_time, whole_seconds

Event = tuple[str, float]  # (raw item id, unix seconds)


@dataclass
class RecommendedItem:
    item: str
    score: float
    title: str | None = None


@dataclass
class Recommendation:
    """Ranked items (best first), the history's unknown item ids, and how the history was used."""

    items: list[RecommendedItem]
    unknown_items: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        items = [{"item": i.item, "score": i.score, "title": i.title} for i in self.items]
        return {"items": items, "unknown_items": list(self.unknown_items), "metadata": dict(self.metadata)}


class HistoryError(Tim4RecError):
    """A history or query that cannot be answered: times that decrease or are out of range, values of the
    wrong type or shape."""


def parse_events(events: object, where: str = "history") -> list[Event]:
    """``events`` as checked (item id, seconds) pairs, in the given order; a :class:`HistoryError` naming
    ``where[i]`` for the first event that is not an (item, time) pair or ``{"item", "time"}`` record, whose
    item is not a non-empty id, or whose time is not valid (:func:`tim4rec.times.check_time`)."""
    shape = 'a list of (item id, unix time) pairs or {"item": ..., "time": ...} records'
    if isinstance(events, (str, bytes, Mapping)) or not isinstance(events, Iterable):
        raise HistoryError(f"{where}: expected {shape}, got {events!r:.80}")
    checked = []
    for position, event in enumerate(events):
        place = f"{where}[{position}]"
        if isinstance(event, Mapping) and set(event) == {"item", "time"}:
            item, time = event["item"], event["time"]
        elif isinstance(event, (tuple, list)) and len(event) == 2:
            item, time = event
        else:
            raise HistoryError(
                f'{place}: expected (item id, unix time) or {{"item": ..., "time": ...}}, got {event!r:.80}'
            )
        if isinstance(item, bool) or not isinstance(item, (str, int)) or str(item).strip() == "":
            raise HistoryError(f"{place}: expected an item id (a non-empty string), got {item!r:.80}")
        checked.append((str(item), check_time(time, place, HistoryError)))
    return checked


def check_k(k: object) -> int:
    """``k`` if it is a positive integer (not a bool), else a :class:`HistoryError` naming ``k``."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise HistoryError(f"k: expected a positive integer, got {k!r}")
    return k


@dataclass
class Query:
    """One request: a history and how to rank for it."""

    history: Sequence[Event]
    k: int = 10
    exclude_seen: bool = True
    candidates: Sequence[str] | None = None
    #: the time the recommendation is for (unix seconds; None: now); read by models that read it
    request_time: float | None = None

    def check(self) -> None:
        """A :class:`HistoryError` naming the first field that cannot be answered (the history is checked
        when it is encoded)."""
        check_k(self.k)
        if self.request_time is not None:
            check_time(self.request_time, "request_time", HistoryError)
        if not isinstance(self.exclude_seen, bool):
            raise HistoryError(f"exclude_seen: expected true or false, got {self.exclude_seen!r}")
        if self.candidates is not None and (
            isinstance(self.candidates, (str, bytes)) or not all(isinstance(c, str) for c in self.candidates)
        ):
            raise HistoryError(f"candidates: expected a list of item ids, got {self.candidates!r:.80}")


@dataclass
class EncodedHistory:
    """A history in model ids: items (n,) long 1..n_items, times (n,) long seconds; the unknown raw ids."""

    items: torch.Tensor
    times: torch.Tensor
    unknown: list[str]
    #: the latest event's time as given, known item or not (None: no events)
    last_time: float | None = None


class Recommender:
    """A saved model with its dataset's id maps (and, when available, item titles and user histories)."""

    def __init__(
        self,
        model: SequentialRecommender,
        saved: SavedModel,
        config: Config,
        item_metadata: dict[str, dict[str, str]] | None = None,
        interactions: Interactions | None = None,
    ):
        self.model = model.eval()
        self.saved = saved
        self.config = config
        self.item_tokens: list[str] = [str(t) for t in saved.item_tokens]
        self.item_ids = {token: index for index, token in enumerate(self.item_tokens) if index > 0}
        self.item_metadata = item_metadata or {}
        self.interactions = interactions
        self.user_index: dict[str, int] = {}
        if interactions is not None:
            self.user_index = {str(token): index for index, token in enumerate(interactions.user_tokens) if index > 0}
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, path: str | Path, *, with_dataset: bool = True, device: str = "cpu") -> Recommender:
        """Load ``best.pt`` (never unpickles code); with its dataset's users and item titles when
        ``with_dataset`` and the dataset can be read (named datasets are fetched)."""
        saved = load_saved_model(path)
        model = saved.build().to(device)
        config = Config.from_dict(saved.config)
        interactions = metadata = None
        if with_dataset:
            interactions = DataDescription.from_settings(saved.config).load_interactions()
            if [str(t) for t in interactions.item_tokens] != [str(t) for t in saved.item_tokens]:
                raise Tim4RecError(f"{path}: the dataset's item ids differ from the ones the model was trained on")
            metadata_path = item_metadata_path(str(config.dataset), config.data_cache)
            metadata = read_item_metadata(metadata_path, config.ITEM_ID_FIELD) if metadata_path else None
        return cls(model, saved, config, metadata, interactions)

    # -- ids, titles, histories --------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.item_tokens) - 1

    @property
    def streams(self) -> bool:
        """True when the model takes one event at a time (:class:`~tim4rec.models.base.StreamingRecommender`)."""
        return bool(self.model.streaming)

    def title(self, item: str) -> str | None:
        return self.item_metadata.get(item, {}).get("title")

    def item_info(self, item: str) -> dict[str, Any] | None:
        """What is known of an item (None when the model does not know it)."""
        if item not in self.item_ids:
            return None
        return {"item": item, "id": self.item_ids[item], **self.item_metadata.get(item, {})}

    def user_history(self, user: str) -> list[Event]:
        """A dataset user's events (raw item ids, seconds), oldest first; empty for unknown users."""
        index = self.user_index.get(str(user))
        if index is None or self.interactions is None:
            return []
        offsets = self.interactions.offsets
        items = self.interactions.items[offsets[index - 1] : offsets[index]]
        times = self.interactions.timestamps[offsets[index - 1] : offsets[index]]
        return [(self.item_tokens[int(i)], float(t)) for i, t in zip(items, times)]

    def encode(self, history: Sequence[Event]) -> EncodedHistory:
        """Map raw ids to model ids and times to whole seconds; unknown ids are skipped and listed. The
        history is checked (:func:`parse_events`) and its times must not decrease."""
        items, times, unknown = [], [], []
        previous = None
        for position, (item, when) in enumerate(parse_events(history)):
            if previous is not None and when < previous:
                before = f"is before the previous event's {format_time(previous)}"
                raise HistoryError(f"history[{position}]: time {format_time(when)} {before}")
            previous = when
            index = self.item_ids.get(item)
            if index is None:
                unknown.append(item)
                continue
            items.append(index)
            times.append(whole_seconds(when))
        items, times = torch.tensor(items, dtype=torch.long), torch.tensor(times, dtype=torch.long)
        return EncodedHistory(items, times, unknown, previous)

    # -- scoring -----------------------------------------------------------------------------------------------
    def window(self, encoded: EncodedHistory) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """What the model sees of a history: the most recent ``max_seq_length`` events for fixed-length models."""
        n = len(encoded.items)
        limit = self.model.max_seq_length if self.model.fixed_length else n
        used = min(n, limit)
        metadata = {
            "events": n,
            "events_used": used,
            "truncated": used < n,
            "whole_history": not self.model.fixed_length,
        }
        return encoded.items[n - used :], encoded.times[n - used :], metadata

    @torch.no_grad()
    def hidden(
        self, windows: Sequence[tuple[torch.Tensor, torch.Tensor]], request_times: Sequence[float] | None = None
    ) -> torch.Tensor:
        """One batched forward: hidden states (B, d) of right-padded histories (an empty one: a padding
        event), whose products with the output layer score the next item. The forward runs in the
        model's training precision (``mixed_precision``); the states and scores are float32.
        ``request_times`` (one per history): when the recommendations are for (models that read it)."""
        length = max([len(items) for items, _ in windows] + [1])
        item_seq = torch.zeros(len(windows), length, dtype=torch.long)
        time_seq = torch.zeros(len(windows), length, dtype=torch.long)
        lengths = torch.zeros(len(windows), dtype=torch.long)
        for row, (items, times) in enumerate(windows):
            item_seq[row, : len(items)], time_seq[row, : len(times)], lengths[row] = items, times, len(items)
        device = self.device
        history = (item_seq.to(device), lengths.to(device), time_seq.to(device))
        if request_times is not None and self.model.reads_request_time:
            request = torch.tensor([whole_seconds(t) for t in request_times], dtype=torch.long, device=device)
            history += (torch.where(lengths.to(device) > 0, request, history[2][:, 0]),)  # no events: no gap
        with mixed_precision(self.config.mixed_precision, device.type):
            hidden = self.model.predict_hidden(*history)
        return hidden.float()

    @torch.no_grad()
    def rank(
        self,
        hidden: torch.Tensor,
        k: int,
        *,
        seen: Iterable[int] = (),
        candidates: Sequence[str] | None = None,
    ) -> list[RecommendedItem]:
        """The top ``k`` items for one hidden state (d,), padding and ``seen`` ids left out; ties: the
        lower id first. Without ``candidates`` the catalogue is scored in blocks
        (:func:`~tim4rec.evaluation.scoring.blocked_topk`), so a million items need no million-score row."""
        weight, bias = self.model.output_layer()
        if candidates is not None:
            seen = set(_unique_ids(seen).tolist())
            ids = sorted({self.item_ids[c] for c in candidates if c in self.item_ids} - seen - {0})
            index = torch.tensor(ids, dtype=torch.long, device=weight.device)
            scores = F.linear(hidden[None], weight[index], None if bias is None else bias[index]).float()
            values, columns = stable_topk(scores, k)
            return self._items(values[0], index[columns[0]])
        ids = _ids(seen).to(weight.device)  # one row: every left-out id is in row 0
        masked = (torch.zeros_like(ids), ids) if len(ids) else None
        values, indices = blocked_topk(hidden[None], weight, bias, k, masked=masked)
        return self._items(values[0], indices[0])

    @torch.no_grad()
    def rank_batch(
        self, hidden: torch.Tensor, ks: Sequence[int], seen: Sequence[Iterable[int]]
    ) -> list[list[RecommendedItem]]:
        """:meth:`rank` over the whole catalogue for many rows at once: hidden (B, d), one k and one
        collection of left-out ids per row; one blocked top-k of the (B, items) scores."""
        if len(ks) == 0:
            return []
        weight, bias = self.model.output_layer()
        columns = [_ids(ids) for ids in seen]  # repeated ids are harmless: each is scored -inf once or twice
        rows = [torch.full((len(ids),), row, dtype=torch.long) for row, ids in enumerate(columns)]
        masked = None
        if any(len(c) for c in columns):
            masked = (torch.cat(rows).to(weight.device), torch.cat(columns).to(weight.device))
        values, indices = blocked_topk(hidden, weight, bias, max(ks), masked=masked)
        return [self._items(values[row, :k], indices[row, :k]) for row, k in enumerate(ks)]

    def _items(self, values: torch.Tensor, indices: torch.Tensor) -> list[RecommendedItem]:
        """Ranked (score, model id) pairs as raw ids with titles; non-finite scores (left-out ids) dropped."""
        scored = [(v, self.item_tokens[i]) for v, i in zip(values.tolist(), indices.tolist()) if math.isfinite(v)]
        return [RecommendedItem(token, v, self.title(token)) for v, token in scored]

    def recommend(
        self,
        history: Sequence[Event],
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        request_time: float | None = None,
    ) -> Recommendation:
        """The top ``k`` next items for one history (see the module docstring); ``request_time``: when the
        recommendation is for (None: now), read by a model trained with ``request_time``."""
        return self.answer([Query(history, k, exclude_seen, candidates, request_time)])[0]

    def recommend_batch(
        self,
        histories: Sequence[Sequence[Event]],
        k: int = 10,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        request_time: float | None = None,
    ) -> list[Recommendation]:
        """:meth:`recommend` for many histories with one forward."""
        return self.answer([Query(history, k, exclude_seen, candidates, request_time) for history in histories])

    def answer(self, queries: Sequence[Query]) -> list[Recommendation]:
        """Answer many queries (each with its own k, exclusion and candidates) with one forward; the first
        query that cannot be answered raises its :class:`HistoryError`."""
        answers = self.answer_each(queries)
        for answer in answers:
            if isinstance(answer, HistoryError):
                raise answer
        return answers

    def answer_each(self, queries: Sequence[Query]) -> list[Recommendation | HistoryError]:
        """Each query's answer, or its own :class:`HistoryError`: a bad query never fails the others. The
        queries that can be answered share one forward and one scoring pass over the catalogue."""
        outcomes: list[Recommendation | HistoryError | None] = [None] * len(queries)
        valid: list[tuple[int, Query, EncodedHistory]] = []
        for row, query in enumerate(queries):
            try:
                query.check()
                encoded = self.encode(query.history)
                resolve_request_time(query, encoded.last_time)
                valid.append((row, query, encoded))
            except HistoryError as error:
                outcomes[row] = error
        windows = [self.window(encoded) for _, _, encoded in valid]
        requests = [resolve_request_time(query, encoded.last_time) for _, query, encoded in valid]
        hidden = self.hidden([(items, times) for items, times, _ in windows], requests) if windows else None
        seen = [encoded.items if query.exclude_seen else () for _, query, encoded in valid]
        whole = [i for i, (_, query, _) in enumerate(valid) if query.candidates is None]
        ranked: dict[int, list[RecommendedItem]] = {}
        if whole:  # one scoring pass for every query over the whole catalogue
            lists = self.rank_batch(hidden[whole], [valid[i][1].k for i in whole], [seen[i] for i in whole])
            ranked.update(zip(whole, lists))
        for i, (_, query, _) in enumerate(valid):
            if query.candidates is not None:
                ranked[i] = self.rank(hidden[i], query.k, seen=seen[i], candidates=query.candidates)
        for i, ((row, _, encoded), (_, _, metadata)) in enumerate(zip(valid, windows)):
            metadata = {"model": self.saved.model, **metadata, "request_time": requests[i]}
            outcomes[row] = Recommendation(ranked[i], encoded.unknown, metadata)
        return outcomes


def resolve_request_time(query: Query, last_time: float | None) -> float:
    """The time ``query`` asks for: its ``request_time`` (a :class:`HistoryError` when that is before the
    history's last event), or now (the last event's time for a history that lies in the future)."""
    if query.request_time is None:
        return time.time() if last_time is None else max(time.time(), last_time)
    when = float(query.request_time)
    if last_time is not None and when < last_time:
        raise HistoryError(
            f"request_time: {format_time(when)} is before the history's last event at {format_time(last_time)}"
        )
    return when


def _ids(ids: Iterable[int] | torch.Tensor) -> torch.Tensor:
    """Model ids as a long tensor (no copy for a long tensor)."""
    return ids.long() if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)


def _unique_ids(ids: Iterable[int] | torch.Tensor) -> torch.Tensor:
    """Distinct model ids as a long tensor (a history's items, or any collection of ids)."""
    return torch.unique(_ids(ids))
