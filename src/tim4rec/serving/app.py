"""The HTTP service (FastAPI): recommendations for posted histories and for users' stored states.

Ids are the dataset's raw item and user ids as strings, times unix seconds.

- ``POST /recommend`` ``{"history": [{"item": "50", "time": 881250949}, ...], "k": 10, "exclude_seen": true}``
  -> ``{"items": [{"item", "score", "title"}, ...], "unknown_items": [...], "metadata": {...}}``;
- ``POST /users/{id}/events`` ``{"events": [{"item", "time"}, ...]}``: 200 once the events are stored;
- ``GET /users/{id}/recommendations?k=10``: the same shape as ``/recommend``, from the user's state;
- ``GET /users/{id}/history``, ``GET /users`` (some of the dataset's user ids), ``GET /items/{id}``;
- ``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /docs`` and ``GET /redoc`` (OpenAPI, served without a
  network), ``GET /`` (the demo page).

With an API key configured (``ServiceSettings.api_key``), writes (``POST /users/{id}/events``) need it in the
``X-API-Key`` header (or ``Authorization: Bearer``), compared in constant time: 401 without it; reads too
when ``keyed_reads`` is set. The key is never logged nor echoed. A user store whose database cannot be
reached answers 503 (:class:`~tim4rec.serving.databases.StoreUnavailable`) until it can again.

Concurrent ``/recommend`` requests are gathered into one batched forward (at most ``max_batch``):
the requests that arrived while the model was busy, and those arriving within ``batch_wait_ms``
(0 by default: a lone request never waits), so throughput grows with load. The model runs on one worker
thread; the event loop only parses, batches and answers. A request's fault stays its own: each query
of a batch is checked on its own and only the good ones share the forward; should the batched forward
itself fail, its requests are answered one by one. Bad input gets a 4xx with a message: malformed
JSON, wrong types and times out of range (422, :mod:`tim4rec.times`), decreasing times (400), ``k``
out of range and oversized histories (422), bodies over ``max_body_bytes`` (413). An event is
checked in full before anything is stored.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from tim4rec.serving.databases import StoreUnavailable
from tim4rec.serving.recommender import HistoryError, Recommendation, Recommender
from tim4rec.serving.recommender import Query as RecommendQuery
from tim4rec.serving.store import UserStore
from tim4rec.times import MAX_SECONDS


@dataclass(frozen=True)
class ServiceSettings:
    #: the key that writes need (None: none); never in a repr, a log or an error
    api_key: str | None = field(default=None, repr=False)
    #: reads need the key too
    keyed_reads: bool = False
    batching: bool = True
    batch_wait_ms: float = 0.0
    max_batch: int = 64
    max_k: int = 1000
    max_history: int = 10_000
    max_events: int = 1_000
    max_body_bytes: int = 2_000_000


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str = Field(min_length=1, max_length=512)
    time: float = Field(strict=True, allow_inf_nan=False, ge=-MAX_SECONDS, le=MAX_SECONDS)


class RecommendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[EventIn]
    k: StrictInt = Field(10, ge=1)
    exclude_seen: StrictBool = True
    candidates: list[str] | None = None
    #: when the recommendations are for (unix seconds; absent: now), read by models trained with it
    request_time: float | None = Field(None, strict=True, allow_inf_nan=False, ge=-MAX_SECONDS, le=MAX_SECONDS)


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1)


class Metrics:
    """The service's Prometheus metrics (a registry of its own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tim4rec_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram(
            "tim4rec_request_seconds", "Request latency", ["endpoint"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        self.batch_size = Histogram(
            "tim4rec_batch_size", "Requests per batched forward", registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )  # fmt: skip
        self.users_cached = Gauge("tim4rec_users_cached", "User states in memory", registry=self.registry)
        self.in_flight = Gauge("tim4rec_requests_in_flight", "HTTP requests being handled", registry=self.registry)
        self.batched = Counter(
            "tim4rec_batched_queries", "Queries through the batcher, by outcome (answered, refused: a 4xx, failed)",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.mixed_batches = Counter(
            "tim4rec_mixed_batches", "Batches in which refused or failed queries sat beside answered ones",
            registry=self.registry,
        )  # fmt: skip
        self.batch_fallbacks = Counter(
            "tim4rec_batch_fallbacks", "Batched forwards that failed and were answered one query at a time",
            registry=self.registry,
        )  # fmt: skip
        self.user_states = Counter(
            "tim4rec_user_states", "Where the user states that answered came from: warm (cached and current), "
            "caught_up (stepped through events stored by another process), loaded (a stored state), rebuilt",
            ["source"], registry=self.registry,
        )  # fmt: skip
        self.store_unavailable = Counter(
            "tim4rec_store_unavailable", "Requests answered 503 because the user store could not be reached",
            registry=self.registry,
        )  # fmt: skip


class Batcher:
    """Gathers concurrent /recommend queries into one forward on the model's worker thread."""

    def __init__(
        self, recommender: Recommender, executor: ThreadPoolExecutor, settings: ServiceSettings, metrics: Metrics
    ):
        self.recommender, self.executor, self.settings, self.metrics = recommender, executor, settings, metrics
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # sizes of the last batches (tests read them)

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def submit(self, query: RecommendQuery) -> Recommendation:
        loop = asyncio.get_running_loop()
        if not self.settings.batching:
            outcome = (await loop.run_in_executor(self.executor, self._answer, [query]))[0]
        else:
            future = loop.create_future()
            await self.queue.put((query, future))
            outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def _answer(self, queries: list[RecommendQuery]) -> list[Recommendation | Exception]:
        """Each query's answer or its own error (on the model's thread): one forward for the good ones;
        should that forward fail, each query is answered on its own so one fault never spreads."""
        try:
            outcomes: list[Recommendation | Exception] = list(self.recommender.answer_each(queries))
        except Exception as error:  # noqa: BLE001 -- which query caused it is found by answering them one by one
            if len(queries) == 1:
                outcomes = [error]
            else:
                self.metrics.batch_fallbacks.inc()
                outcomes = [_answer_alone(self.recommender, query) for query in queries]
        self._observe(outcomes)
        return outcomes

    def _observe(self, outcomes: list[Recommendation | Exception]) -> None:
        self.metrics.batch_size.observe(len(outcomes))
        self.batches = (self.batches + [len(outcomes)])[-1000:]
        counts = {"answered": 0, "refused": 0, "failed": 0}
        for outcome in outcomes:
            kind = (
                "refused"
                if isinstance(outcome, HistoryError)
                else "failed"
                if isinstance(outcome, Exception)
                else "answered"
            )
            counts[kind] += 1
        for kind, count in counts.items():
            self.metrics.batched.labels(kind).inc(count)
        if counts["answered"] and len(outcomes) > counts["answered"]:
            self.metrics.mixed_batches.inc()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.settings.batch_wait_ms / 1000
        while True:
            batch = [await self.queue.get()]
            while len(batch) < self.settings.max_batch and not self.queue.empty():  # what came in meanwhile
                batch.append(self.queue.get_nowait())
            deadline = loop.time() + wait
            while len(batch) < self.settings.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            try:
                outcomes = await loop.run_in_executor(self.executor, self._answer, [query for query, _ in batch])
            except Exception as error:  # noqa: BLE001 -- the executor itself failed: every waiting request hears it
                outcomes = [error] * len(batch)
            for (_, future), outcome in zip(batch, outcomes):
                if not future.done():
                    future.set_result(outcome)


def _answer_alone(recommender: Recommender, query: RecommendQuery) -> Recommendation | Exception:
    try:
        return recommender.answer_each([query])[0]
    except Exception as error:  # noqa: BLE001 -- this query's own failure, answered as a 500 to it alone
        return error


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 without being read further."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = f'{{"detail": "request body over {limit} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """ASGI middleware: counts requests by route and status, the requests being handled, and observes their
    latency (a plain ASGI wrapper: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream per request)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        self.metrics.in_flight.inc()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class ItemOut(BaseModel):
    item: str
    score: float
    title: str | None = None


class RecommendationOut(BaseModel):
    """The answer of ``/recommend`` and ``/users/{id}/recommendations`` (the OpenAPI schema)."""

    items: list[ItemOut]
    unknown_items: list[str]
    metadata: dict[str, Any]


def _answer_json(answer: Recommendation) -> JSONResponse:
    """The answer as JSON, written directly (FastAPI's response validation cost more than the ranking)."""
    return JSONResponse(answer.to_dict())


def create_app(recommender: Recommender, store: UserStore, settings: ServiceSettings = ServiceSettings()) -> FastAPI:  # noqa: B008
    """The FastAPI application serving ``recommender`` with users' states in ``store``."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tim4rec-model")
    metrics = Metrics()
    batcher = Batcher(recommender, executor, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()
        await asyncio.get_running_loop().run_in_executor(executor, store.close)  # states written, db closed
        executor.shutdown(wait=True)

    # Swagger UI (/docs) and ReDoc (/redoc) from assets that fastapi-offline ships, so they work without a network
    app = FastAPIOffline(
        title="tim4rec", description="Next-item recommendations from a trained tim4rec model.", lifespan=lifespan
    )
    app.state.batcher, app.state.metrics, app.state.store = batcher, metrics, store
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    async def model_call(function, *args):
        """Run ``function`` on the model's worker thread (one at a time)."""
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    app.add_middleware(RequestMetrics, metrics=metrics)
    store.on_source = lambda source: metrics.user_states.labels(source).inc()
    expected_key = None if settings.api_key is None else settings.api_key.encode()

    def key_holder(request: Request) -> None:
        """401 unless the request carries the configured key (``X-API-Key`` or ``Authorization: Bearer``)."""
        if expected_key is None:
            return
        given = request.headers.get("x-api-key")
        if given is None and request.headers.get("authorization", "").lower().startswith("bearer "):
            given = request.headers["authorization"][7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), expected_key):
            raise HTTPException(
                401, "this server needs its API key here: send it in the X-API-Key header",
                headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip

    writer = [Depends(key_holder)]
    reader = writer if settings.keyed_reads else []

    @app.exception_handler(StoreUnavailable)
    async def store_unavailable(request: Request, error: StoreUnavailable):
        metrics.store_unavailable.inc()
        return JSONResponse({"detail": str(error)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(HistoryError)
    async def bad_history(request: Request, error: HistoryError):
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, error: RequestValidationError):
        """422 with where and what, without echoing the input (it may hold NaN, which JSON cannot carry)."""
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in error.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    def check_k(k: int) -> None:
        if k > settings.max_k:
            raise HTTPException(422, f"k: at most {settings.max_k}, got {k}")

    @app.post("/recommend", response_model=RecommendationOut, dependencies=reader)
    async def recommend(body: RecommendIn) -> JSONResponse:
        check_k(body.k)
        if len(body.history) > settings.max_history:
            raise HTTPException(422, f"history: at most {settings.max_history} events, got {len(body.history)}")
        history = [(event.item, event.time) for event in body.history]
        query = RecommendQuery(history, body.k, body.exclude_seen, body.candidates, body.request_time)
        return _answer_json(await batcher.submit(query))

    @app.post("/users/{user}/events", dependencies=writer)
    async def post_events(user: str, body: EventsIn) -> dict[str, Any]:
        if len(body.events) > settings.max_events:
            raise HTTPException(422, f"events: at most {settings.max_events} per request, got {len(body.events)}")
        result = await model_call(store.observe, user, [(e.item, e.time) for e in body.events])
        metrics.users_cached.set(store.cached_users())
        return {"user": user, **result}

    @app.get("/users/{user}/recommendations", response_model=RecommendationOut, dependencies=reader)
    async def user_recommendations(
        user: str,
        k: int = Query(10, ge=1),
        exclude_seen: bool = True,
        request_time: float | None = Query(None, ge=-MAX_SECONDS, le=MAX_SECONDS, allow_inf_nan=False),
    ) -> JSONResponse:
        check_k(k)
        answer = await model_call(store.recommend, user, k, exclude_seen, request_time)
        metrics.users_cached.set(store.cached_users())
        return _answer_json(answer)

    @app.get("/users/{user}/history", dependencies=reader)
    async def user_history(user: str, limit: int = Query(50, ge=1, le=10_000)) -> dict[str, Any]:
        events = await model_call(store.history, user)
        shown = [{"item": item, "time": when, "title": recommender.title(item)} for item, when in events[-limit:]]
        return {"user": user, "events": len(events), "history": shown}

    @app.get("/users")
    async def users(limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        return {"users": list(recommender.user_index)[:limit], "dataset_users": len(recommender.user_index)}

    @app.get("/items/{item}")
    async def item(item: str) -> dict[str, Any]:
        info = recommender.item_info(item)
        if info is None:
            raise HTTPException(404, f"unknown item {item!r}")
        return info

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": recommender.saved.model, "items": recommender.n_items,
                "streaming": recommender.streams, "step": store.step.mode, "batching": settings.batching,
                "reads_request_time": recommender.model.reads_request_time, "store": store.db.where,
                "writes_need_key": expected_key is not None,
                "reads_need_key": expected_key is not None and settings.keyed_reads}  # fmt: skip

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.users_cached.set(store.cached_users())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def demo() -> str:
        return (resources.files("tim4rec.serving") / "demo.html").read_text(encoding="utf-8")

    return app
