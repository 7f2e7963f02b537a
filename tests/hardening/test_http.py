"""The HTTP service under bad requests and events: each is a 4xx naming the field, never stored, and never
hurts another request or user; bad serving options are one clear line before anything listens."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Server
from tim4rec.serving import Recommender
from tim4rec.serving.app import Batcher, Metrics, ServiceSettings
from tim4rec.serving.recommender import Query as RecommendQuery
from tim4rec.serving.recommender import Recommendation


@pytest.fixture(scope="module")
def recommender(trained) -> Recommender:
    return Recommender.load(trained["tim4rec"])


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory) -> Server:
    """Batching on (the default), waiting 30 ms for more requests so that concurrent ones share a batch."""
    running = Server(trained["tim4rec"], tmp_path_factory.mktemp("db") / "users.sqlite", "--batch-wait-ms", "30")
    yield running.start()
    running.stop()


def a_user(recommender: Recommender) -> str:
    return next(u for u in recommender.user_index if len(recommender.user_history(u)) >= 10)


GOOD = [{"item": "50", "time": 881250949}, {"item": "1", "time": 881250950}]

# name: (method, path, JSON body or raw text, status, a fragment of the answer)
BAD_REQUESTS = {
    "time 1e30": ("POST", "/recommend", {"history": [{"item": "50", "time": 1e30}]}, 422, "time"),
    "time 1e19": ("POST", "/recommend", {"history": [{"item": "50", "time": 10**19}]}, 422, "less than or equal"),
    "time -1e300": ("POST", "/recommend", {"history": [{"item": "50", "time": -1e300}]}, 422, "greater than"),
    "time NaN": ("POST", "/recommend", '{"history": [{"item": "50", "time": NaN}]}', 422, "finite"),
    "time true": ("POST", "/recommend", {"history": [{"item": "50", "time": True}]}, 422, "time"),
    "time as text": ("POST", "/recommend", {"history": [{"item": "50", "time": "5"}]}, 422, "time"),
    "k true": ("POST", "/recommend", {"history": GOOD, "k": True}, 422, '"k"'),
    "k 2.5": ("POST", "/recommend", {"history": GOOD, "k": 2.5}, 422, '"k"'),
    "k as text": ("POST", "/recommend", {"history": GOOD, "k": "3"}, 422, '"k"'),
    "exclude_seen a word": ("POST", "/recommend", {"history": GOOD, "exclude_seen": "no"}, 422, "exclude_seen"),
    "bare item ids": ("POST", "/recommend", {"history": ["50", "1"]}, 422, "history"),
    "decreasing times": ("POST", "/recommend", {"history": GOOD[::-1]}, 400, "is before the previous event"),
    "event time 1e30": ("POST", "/users/u/events", {"events": [{"item": "50", "time": 1e30}]}, 422, "time"),
    "event time 1e300": ("POST", "/users/u/events", {"events": [{"item": "50", "time": 1e300}]}, 422, "time"),
    "event time NaN": ("POST", "/users/u/events", '{"events": [{"item": "50", "time": NaN}]}', 422, "finite"),
    "event time true": ("POST", "/users/u/events", {"events": [{"item": "50", "time": True}]}, 422, "time"),
    "k true in the query": ("GET", "/users/u/recommendations?k=true", None, 422, "k"),
    "k 0 in the query": ("GET", "/users/u/recommendations?k=0", None, 422, "k"),
}  # fmt: skip


def send(client: httpx.Client, method: str, path: str, body) -> httpx.Response:
    if isinstance(body, str):
        return client.request(method, path, content=body, headers={"content-type": "application/json"})
    return client.request(method, path, json=body)


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_a_bad_request_is_a_4xx_and_stores_nothing(case, server: Server):
    method, path, body, status, fragment = BAD_REQUESTS[case]
    with server.client() as client:
        before = client.get("/users/u/history").json()
        answer = send(client, method, path, body)
        assert answer.status_code == status and fragment in answer.text, answer.text
        assert client.get("/users/u/history").json() == before
        assert client.get("/users/u/recommendations").status_code == 200


def test_a_rejected_event_leaves_the_user_working(server: Server):
    with server.client() as client:
        assert client.post("/users/r/events", json={"events": [{"item": "50", "time": 100}]}).status_code == 200
        bad = {"events": [{"item": "1", "time": 101}, {"item": "1", "time": 1e30}]}
        assert client.post("/users/r/events", json=bad).status_code == 422
        assert client.get("/users/r/history").json()["events"] == 1  # the good event of the bad request too
        assert client.get("/users/r/recommendations").status_code == 200


def test_an_unknown_item_never_breaks_a_known_user_across_a_restart(trained, recommender: Recommender, tmp_path: Path):
    user = a_user(recommender)
    last = recommender.user_history(user)[-1][1]
    server = Server(trained["tim4rec"], tmp_path / "users.sqlite").start()
    try:
        with server.client() as client:
            client.post(f"/users/{user}/events", json={"events": [{"item": "50", "time": last + 1}]})
            posted = client.post(f"/users/{user}/events", json={"events": [{"item": "no-such-item", "time": last + 2}]})
            assert posted.status_code == 200 and posted.json()["unknown_items"] == ["no-such-item"]
            first = client.get(f"/users/{user}/recommendations")
            assert first.status_code == 200 and first.json()["unknown_items"] == ["no-such-item"]
    finally:
        server.stop()  # SIGTERM: the state is written to the database
    server.start()
    try:
        with server.client() as client:
            again = client.get(f"/users/{user}/recommendations")
            assert again.status_code == 200 and again.json()["items"] == first.json()["items"]
    finally:
        server.stop()


def test_late_events_within_a_second_match_a_recompute(server: Server):
    with server.client() as client:
        assert (
            client.post("/users/sub/events", json={"events": [{"item": "50", "time": 100.7}]}).json()["late"] is False
        )
        assert client.post("/users/sub/events", json={"events": [{"item": "1", "time": 100.2}]}).json()["late"] is True
        history = client.get("/users/sub/history").json()["history"]
        assert [(e["item"], e["time"]) for e in history] == [("1", 100.2), ("50", 100.7)]
        served = client.get("/users/sub/recommendations").json()["items"]
        ordered = [{"item": e["item"], "time": e["time"]} for e in history]
        recomputed = client.post("/recommend", json={"history": ordered}).json()["items"]
        assert [i["item"] for i in served] == [i["item"] for i in recomputed]


def metric(text: str, name: str) -> float:
    return sum(float(value) for value in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_bad_requests_beside_sixty_good_ones_in_shared_batches(server: Server, recommender: Recommender):
    history = [{"item": item, "time": time} for item, time in recommender.user_history(a_user(recommender))]
    bad_bodies = [
        {"history": [{"item": "50", "time": 1e30}]},  # refused by validation (422)
        {"history": history[::-1]},  # reaches the batcher, refused there (400)
        {"history": history[:3] + [{"item": "50", "time": -5}]},  # likewise
    ]
    good, bad = [], []

    def ask(bodies: list, into: list) -> None:
        with server.client() as client:
            for body in bodies:
                into.append(client.post("/recommend", json={**body, "k": 5}).status_code)

    threads = [threading.Thread(target=ask, args=([{"history": history}] * 10, good)) for _ in range(6)]
    threads += [threading.Thread(target=ask, args=(bad_bodies * 4, bad)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert good == [200] * 60
    assert len(bad) == 24 and sorted(set(bad)) == [400, 422]
    text = httpx.get(server.url + "/metrics").text
    assert metric(text, "tim4rec_batched_queries_total") >= 60 + 16
    assert metric(text, "tim4rec_mixed_batches_total") >= 1, text  # refused and answered queries shared a batch
    assert 'tim4rec_requests_total{endpoint="/recommend",status="500"}' not in text


def run_serve(checkpoint: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tim4rec", "serve", str(checkpoint), "--threads", "1", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["--cache-size", "-1"], "--cache-size: expected a non-negative number of users, got -1"),
        (["--port", "70000"], "--port: expected a port number from 1 to 65535, got 70000"),
        (["--max-batch", "0"], "--max-batch: expected a positive number"),
        (["--db", "TEXT"], "cannot open as the user store's SQLite database"),
        (["--db", "MISSING"], "does not exist"),
        (["--port", "BUSY"], "cannot listen on 127.0.0.1:"),
    ],
    ids=["cache size -1", "port 70000", "max batch 0", "db a text file", "db in a missing folder", "port in use"],
)
def test_bad_serve_options_are_one_line(options, fragment, trained, tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n" * 100)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        replace = {
            "TEXT": str(notes),
            "MISSING": str(tmp_path / "no" / "users.sqlite"),
            "BUSY": str(busy.getsockname()[1]),
        }
        done = run_serve(trained["tim4rec"], *[replace.get(option, option) for option in options])
    errors = [line for line in done.stderr.splitlines() if line.startswith("tim4rec: error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert fragment in errors[0] and "serving" not in done.stderr, done.stderr


def test_a_batched_forward_that_fails_is_answered_one_query_at_a_time(recommender: Recommender, monkeypatch):
    """An unforeseen failure inside the batched forward: the batch falls back to one query at a time, so
    only the query that causes it fails (a 500 for it alone)."""
    poison = 7  # a history of this many events makes the forward fail
    forward = recommender.hidden

    def failing_hidden(windows, *rest):
        if any(len(items) == poison for items, _ in windows):
            raise RuntimeError("the forward failed")
        return forward(windows, *rest)

    monkeypatch.setattr(recommender, "hidden", failing_hidden)
    good = RecommendQuery([("50", 1), ("1", 2)], k=3)
    bad = RecommendQuery([("50", t) for t in range(poison)], k=3)

    async def main():
        executor = ThreadPoolExecutor(max_workers=1)
        batcher = Batcher(recommender, executor, ServiceSettings(batch_wait_ms=50), Metrics())
        batcher.start()
        try:
            return batcher, await asyncio.gather(*[batcher.submit(q) for q in (good, bad, good, good)],
                                                 return_exceptions=True)  # fmt: skip
        finally:
            await batcher.stop()
            executor.shutdown()

    batcher, outcomes = asyncio.run(main())
    assert batcher.batches == [4]
    assert isinstance(outcomes[1], RuntimeError)
    assert all(isinstance(outcomes[i], Recommendation) and len(outcomes[i].items) == 3 for i in (0, 2, 3))
    assert batcher.metrics.registry.get_sample_value("tim4rec_batch_fallbacks_total") == 1
