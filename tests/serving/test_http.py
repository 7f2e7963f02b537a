"""The HTTP service, against a real server process: endpoints, bad input, concurrency and batching,
durability across kill -9, and SIGTERM draining requests in flight."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.serving.conftest import Server
from tim4rec.serving import Recommender


@pytest.fixture(scope="module")
def recommender(trained) -> Recommender:
    return Recommender.load(trained["tim4rec"])


def a_user(recommender: Recommender) -> str:
    return next(u for u in recommender.user_index if len(recommender.user_history(u)) >= 10)


def test_every_endpoint(server: Server, recommender: Recommender):
    user = a_user(recommender)
    with server.client() as client:
        assert client.get("/health").json()["status"] == "ok"
        history = [{"item": i, "time": t} for i, t in recommender.user_history(user)[:8]]
        answer = client.post("/recommend", json={"history": history, "k": 3}).json()
        assert len(answer["items"]) == 3 and answer["unknown_items"] == [] and answer["items"][0]["title"]
        last = recommender.user_history(user)[-1][1]
        stored = client.post(f"/users/{user}/events", json={"events": [{"item": "50", "time": last + 5}]})
        assert stored.status_code == 200 and stored.json()["stored"] == 1
        mine = client.get(f"/users/{user}/recommendations", params={"k": 4}).json()
        assert len(mine["items"]) == 4 and mine["metadata"]["source"] == "streaming state"
        shown = client.get(f"/users/{user}/history", params={"limit": 10000}).json()
        assert shown["history"][-1]["item"] == "50" and shown["events"] == len(recommender.user_history(user)) + 1
        assert user in client.get("/users").json()["users"]
        assert client.get("/items/50").json()["title"] == recommender.title("50")
        assert client.get("/items/no-such").status_code == 404
        assert "tim4rec_requests_total" in client.get("/metrics").text
        assert client.get("/openapi.json").json()["paths"]["/recommend"]
        assert "<title>tim4rec demo</title>" in client.get("/").text


BAD_REQUESTS = {
    "malformed JSON": ("post", "/recommend", b"{history: [", 422),
    "history not a list": ("post", "/recommend", {"history": "50"}, 422),
    "time a word": ("post", "/recommend", {"history": [{"item": "50", "time": "noon"}]}, 422),
    "item missing": ("post", "/recommend", {"history": [{"time": 1}]}, 422),
    "unknown field": ("post", "/recommend", {"history": [], "kk": 3}, 422),
    "k zero": ("post", "/recommend", {"history": [], "k": 0}, 422),
    "k too large": ("post", "/recommend", {"history": [], "k": 100000}, 422),
    "k a word": ("get", "/users/1/recommendations?k=ten", None, 422),
    "decreasing times": ("post", "/recommend", {"history": [{"item": "50", "time": 5}, {"item": "1", "time": 4}]}, 400),
    "NaN time": ("post", "/recommend", b'{"history": [{"item": "50", "time": NaN}]}', 422),
    "history too long": ("post", "/recommend", {"history": [{"item": "1", "time": t} for t in range(10001)]}, 422),
    "body too large": ("post", "/recommend", b"{" + b" " * 3_000_000 + b"}", 413),
    "no events": ("post", "/users/1/events", {"events": []}, 422),
    "events not a list": ("post", "/users/1/events", {"events": {"item": "1"}}, 422),
    "unknown item page": ("get", "/items/no-such-item", None, 404),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_with_a_message(case, server: Server):
    method, path, body, status = BAD_REQUESTS[case]
    with server.client() as client:
        if method == "get":
            response = client.get(path)
        elif isinstance(body, bytes):
            response = client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = client.post(path, json=body)
        assert response.status_code == status, response.text
        assert response.json()["detail"]
        assert client.get("/health").status_code == 200  # the worker survived


def test_concurrent_requests_equal_the_python_api_and_are_batched(server: Server, recommender: Recommender):
    users = list(recommender.user_index)
    histories = [recommender.user_history(users[i % len(users)])[: 5 + i % 20] for i in range(200)]

    async def ask_all():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            bodies = [{"history": [{"item": i, "time": t} for i, t in h], "k": 5} for h in histories]
            return await asyncio.gather(*(client.post("/recommend", json=b) for b in bodies))

    responses = asyncio.run(ask_all())
    assert all(r.status_code == 200 for r in responses)
    for history, response in zip(histories, responses):
        expected = recommender.recommend(history, k=5)
        got = response.json()["items"]
        assert [i["item"] for i in got] == [i.item for i in expected.items]
        torch.testing.assert_close(
            torch.tensor([i["score"] for i in got]), torch.tensor([i.score for i in expected.items])
        )
    metrics = httpx.get(server.url + "/metrics").text
    single = float(re.search(r'tim4rec_batch_size_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    batches = float(re.search(r"tim4rec_batch_size_count (\S+)", metrics).group(1))
    assert batches < 200 and single < batches  # some forwards answered more than one request


def test_acknowledged_events_survive_kill_9(trained, tmp_path: Path):
    database = tmp_path / "events.sqlite"
    server = Server(trained["tim4rec"], database).start()
    acknowledged, stop = [], threading.Event()

    def post_events():
        with server.client() as client:
            for n in range(10_000):
                if stop.is_set():
                    return
                try:
                    response = client.post("/users/stream-user/events", json={"events": [{"item": "50", "time": n}]})
                except httpx.HTTPError:
                    return
                if response.status_code == 200:
                    acknowledged.append(n)

    poster = threading.Thread(target=post_events)
    poster.start()
    while len(acknowledged) < 30:
        pass
    server.stop(signal.SIGKILL)
    stop.set()
    poster.join()
    restarted = Server(trained["tim4rec"], database).start()
    try:
        with restarted.client() as client:
            stored = client.get("/users/stream-user/history", params={"limit": 10000}).json()
        times = [event["time"] for event in stored["history"]]
        assert set(acknowledged) <= set(times) and stored["events"] >= len(acknowledged)
        with restarted.client() as client:  # the state is rebuilt from the events
            assert client.get("/users/stream-user/recommendations").json()["metadata"]["events"] == stored["events"]
    finally:
        restarted.stop()


def requests_reached(server: Server, endpoint: str) -> int:
    """Requests to ``endpoint`` the server has answered or is handling (in flight counts every endpoint, so
    this reads correctly while only ``endpoint`` and the /metrics request asking are sent)."""
    text = httpx.get(server.url + "/metrics").text
    in_flight = float(re.search(r"^tim4rec_requests_in_flight (\S+)$", text, re.M).group(1)) - 1
    answered = re.findall(
        rf'^tim4rec_requests_total\{{endpoint="{re.escape(endpoint)}",status="\d+"\}} (\S+)$', text, re.M
    )
    return int(in_flight + sum(float(n) for n in answered))


def test_sigterm_drains_requests_in_flight(trained, tmp_path: Path, recommender: Recommender):
    server = Server(trained["tim4rec"], tmp_path / "drain.sqlite").start()
    items = [item for item, _ in recommender.user_history(a_user(recommender))]
    history = [{"item": items[n % len(items)], "time": n} for n in range(3000)]  # long: slow to score
    results = []

    def ask():
        with server.client() as client:
            results.append(client.post("/recommend", json={"history": history, "k": 5}).status_code)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    # SIGTERM only once the server holds all eight (a fixed pause was too short on a loaded machine: the
    # clients had not connected yet and were refused); this /metrics request is in flight itself
    deadline = time.monotonic() + 60
    while (reached := requests_reached(server, "/recommend")) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reached == 8  # (here none had been answered yet in three runs: the long history takes a while)
    code = server.stop(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert code == 0 and results == [200] * 8, (code, results)
    assert json.loads(json.dumps(results))  # every in-flight request was answered
