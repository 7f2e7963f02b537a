"""Two ``tim4rec serve`` replicas sharing one PostgreSQL server: coherent answers under concurrent writes, a
replica killed with SIGKILL loses nothing it acknowledged, the database lost and back (503, then answers), and
writes that need a key."""

from __future__ import annotations

import random
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import Server
from tim4rec.serving import Recommender
from tim4rec.serving.databases import open_database

T0 = 1_000_000_000
REQUEST_TIME = T0 + 10**7  # explicit, so that answers never depend on the clock


@pytest.fixture(scope="module")
def recommender(trained: dict[str, Path]) -> Recommender:
    return Recommender.load(trained["tim4rec"])


def metric(client: httpx.Client, name: str, label: str = "") -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + label + " ") or (not label and line.startswith(name + " ")):
            return float(line.split()[-1])
    return 0.0


def test_two_replicas_answer_as_a_recompute_from_the_stored_history(trained, recommender: Recommender, postgres):
    url = postgres.fresh_database("replicas")
    replicas = [Server(trained["tim4rec"], url).start() for _ in range(2)]
    try:
        rng = random.Random(0)
        items = list(recommender.item_ids)
        users = [f"r{u}" for u in range(50)]
        events = [(rng.choice(users), rng.choice(items), T0 + rng.randrange(10**6)) for _ in range(1000)]
        clients = [r.client() for r in replicas]

        def work(share: list[tuple[str, str, int]], seed: int) -> list[int]:
            local, statuses = random.Random(seed), []
            for user, item, when in share:  # each event through either replica, then reads of the user
                body = {"events": [{"item": item, "time": when}]}
                post = local.choice(clients).post(f"/users/{user}/events", json=body)
                statuses.append(post.status_code)
                for _ in range(3):
                    read = local.choice(clients).get(f"/users/{user}/recommendations?request_time={REQUEST_TIME}")
                    statuses.append(read.status_code)
            return statuses

        with ThreadPoolExecutor(4) as pool:
            outcomes = list(pool.map(work, [events[i::4] for i in range(4)], range(4)))
        assert {status for statuses in outcomes for status in statuses} == {200}

        stored = open_database(url)
        for user in users:
            rows = stored.events(user)
            assert sorted((item, when) for _, item, when in rows) == sorted((i, w) for u, i, w in events if u == user)
            history = sorted(recommender.user_history(user) + [(item, when) for _, item, when in rows],
                             key=lambda event: event[1])  # fmt: skip
            expected = recommender.recommend(history, k=10, request_time=REQUEST_TIME)
            for client in clients:
                answer = client.get(f"/users/{user}/recommendations?k=10&request_time={REQUEST_TIME}").json()
                assert [i["item"] for i in answer["items"]] == [i.item for i in expected.items]
                assert [i["score"] for i in answer["items"]] == pytest.approx(
                    [i.score for i in expected.items], rel=1e-4, abs=1e-5
                )
        stored.close()
        sources = {s: sum(metric(c, "tim4rec_user_states_total", f'{{source="{s}"}}') for c in clients)
                   for s in ("warm", "caught_up", "loaded", "rebuilt")}  # fmt: skip
        assert sources["warm"] > sum(sources.values()) / 2, sources
        assert sources["caught_up"] > 0, sources  # the replicas did see each other's writes
    finally:
        for replica in replicas:
            replica.stop()


def test_a_killed_replica_loses_nothing_it_acknowledged(trained, recommender: Recommender, postgres):
    url = postgres.fresh_database("kill")
    victim, survivor = (Server(trained["tim4rec"], url).start() for _ in range(2))
    items = list(recommender.item_ids)
    acknowledged: list[tuple[str, str, float]] = []
    survivor_statuses: list[int] = []
    lock, killed = threading.Lock(), threading.Event()

    def load(server: Server, statuses: list[int] | None, offset: int) -> None:
        with server.client() as client:
            for n in range(150):
                user, item, when = f"k{n % 10}", items[n % len(items)], T0 + offset + n
                try:
                    answer = client.post(f"/users/{user}/events", json={"events": [{"item": item, "time": when}]})
                except httpx.HTTPError:
                    continue  # the victim is gone: its unanswered events may or may not be stored
                if statuses is not None:
                    statuses.append(answer.status_code)
                if answer.status_code == 200:
                    with lock:
                        acknowledged.append((user, item, float(when)))
                if n == 60 and statuses is None:
                    killed.set()

    threads = [threading.Thread(target=load, args=(victim, None, 0)),
               threading.Thread(target=load, args=(survivor, survivor_statuses, 10**5))]  # fmt: skip
    [t.start() for t in threads]
    killed.wait(120)
    victim.stop(signal.SIGKILL)
    [t.join() for t in threads]
    survivor.stop()
    assert survivor_statuses == [200] * 150  # the other replica kept answering
    stored = open_database(url)
    rows = {(user, item, when) for user in {u for u, _, _ in acknowledged} for _, item, when in stored.events(user)}
    stored.close()
    assert set(acknowledged) <= rows and len(acknowledged) > 150


def test_the_database_lost_and_back(trained, recommender: Recommender, postgres):
    server = Server(trained["tim4rec"], postgres.fresh_database("lost")).start()
    try:
        with server.client() as client:
            item = next(iter(recommender.item_ids))
            assert client.post("/users/l/events", json={"events": [{"item": item, "time": T0}]}).status_code == 200
            postgres.stop()
            try:
                refused = client.post("/users/l/events", json={"events": [{"item": item, "time": T0 + 1}]})
                read = client.get(f"/users/l/recommendations?request_time={REQUEST_TIME}")
            finally:
                postgres.start()
            assert refused.status_code == read.status_code == 503
            assert "cannot be reached" in refused.json()["detail"]
            assert client.get(f"/users/l/recommendations?request_time={REQUEST_TIME}").status_code == 200
            assert client.get("/users/l/history").json()["events"] == 1  # the refused event was not stored
            assert metric(client, "tim4rec_store_unavailable_total") == 2
    finally:
        server.stop()


def test_writes_need_the_key_and_the_key_is_never_shown(trained, tmp_path: Path):
    key = "s3cret-key-that-must-not-leak"
    server = Server(trained["tim4rec"], tmp_path / "users.sqlite", "--api-key", key).start()
    try:
        with server.client() as client:
            body = {"events": [{"item": "50", "time": T0}]}
            missing = client.post("/users/a/events", json=body)
            wrong = client.post("/users/a/events", json=body, headers={"X-API-Key": key[:-1]})
            assert missing.status_code == wrong.status_code == 401
            assert key not in missing.text + wrong.text
            assert client.post("/users/a/events", json=body, headers={"X-API-Key": key}).status_code == 200
            bearer = {"Authorization": f"Bearer {key}"}
            assert client.post("/users/a/events", json={"events": [{"item": "50", "time": T0 + 1}]},
                               headers=bearer).status_code == 200  # fmt: skip
            assert client.get("/users/a/recommendations").status_code == 200  # reads stay open
            assert client.get("/health").json()["writes_need_key"] is True
    finally:
        server.stop()
    assert key not in server.stderr
