"""The user store on both databases (an SQLite file, a real PostgreSQL server): two stores on one database
stand for two replicas; what one stores, the other's cached state catches up with before it answers."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from tim4rec.errors import Tim4RecError
from tim4rec.serving import Recommender, UserStore
from tim4rec.serving.databases import PostgresEvents, StoreUnavailable, open_database

T0 = 1_000_000_000  # times of the events the tests store (after every event of the data slice)


@pytest.fixture(scope="module")
def recommender(trained: dict[str, Path]) -> Recommender:
    return Recommender.load(trained["tim4rec"])


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path: Path) -> str:
    """Where two stores meet: an SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "users.sqlite")
    return request.getfixturevalue("postgres").fresh_database(f"t{random.randrange(10**9)}")


def items(recommender: Recommender, count: int) -> list[str]:
    return list(recommender.item_ids)[:count]


def same_answer(store: UserStore, recommender: Recommender, user: str) -> None:
    """The store's answer for ``user`` equals a recompute from the user's whole stored history."""
    answer = store.recommend(user, k=10, request_time=T0 + 10**6)
    expected = recommender.recommend(store.history(user), k=10, request_time=T0 + 10**6)
    assert [i.item for i in answer.items] == [i.item for i in expected.items]
    assert [i.score for i in answer.items] == pytest.approx([i.score for i in expected.items], rel=1e-4, abs=1e-5)


def test_a_replica_catches_up_with_events_another_stored(recommender: Recommender, database: str):
    first, second = UserStore(recommender, database), UserStore(recommender, database)
    names = items(recommender, 6)
    first.observe("u", [(names[0], T0), (names[1], T0 + 10)])
    same_answer(second, recommender, "u")  # cold: read from the database
    first.observe("u", [(names[2], T0 + 20)])
    before = dict(second.sources)
    same_answer(second, recommender, "u")  # its cached state was one event behind
    assert second.sources["caught_up"] == before["caught_up"] + 1
    same_answer(second, recommender, "u")
    assert second.sources["warm"] == before["warm"] + 1
    first.observe("u", [(names[3], T0 + 5)])  # late: the other's state is rebuilt
    same_answer(second, recommender, "u")
    assert second.sources["rebuilt"] == before["rebuilt"] + 1
    # the second writes while its state is behind the first's last write: both orders kept
    first.observe("u", [(names[4], T0 + 30)])
    result = second.observe("u", [(names[5], T0 + 40)])
    assert not result["late"] and result["events"] == 6  # the first one's last write included
    same_answer(first, recommender, "u")
    same_answer(second, recommender, "u")
    first.close(), second.close()


def test_concurrent_writers_keep_one_order_per_user(recommender: Recommender, database: str):
    stores = [UserStore(recommender, database) for _ in range(2)]
    names = items(recommender, 20)
    users = [f"w{u}" for u in range(5)]
    plan = [(random.Random(u).choice(users), (names[k % 20], T0 + k)) for u, k in enumerate(range(200))]

    def write(which: int) -> None:
        for n, (user, event) in enumerate(plan):
            if n % 2 == which:
                stores[which].observe(user, [event])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    [t.start() for t in threads], [t.join() for t in threads]
    check = open_database(database)
    for user in users:
        rows = check.events(user)
        assert [seq for seq, _, _ in rows] == list(range(len(rows)))  # one gap-free order
        assert sorted(t for _, _, t in rows) == sorted(e[1] for u, e in plan if u == user)
        for store in stores:
            same_answer(store, recommender, user)
    check.close()
    for store in stores:
        store.close()


def test_states_written_on_close_are_loaded_by_the_next_store(recommender: Recommender, database: str):
    store = UserStore(recommender, database)
    store.observe("s", [(name, T0 + k) for k, name in enumerate(items(recommender, 5))])
    store.close()
    again = UserStore(recommender, database)
    same_answer(again, recommender, "s")
    assert again.sources["loaded"] == 1 and again.sources["rebuilt"] == 0
    again.close()


def test_an_unreachable_server_is_a_clear_error_and_the_store_reconnects(recommender: Recommender, postgres):
    url = postgres.fresh_database("reconnect")
    store = UserStore(recommender, url)
    store.observe("r", [(items(recommender, 1)[0], T0)])
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            store.observe("r", [(items(recommender, 2)[1], T0 + 1)])
    finally:
        postgres.start()
    store.observe("r", [(items(recommender, 3)[2], T0 + 2)])  # connected again, no restart
    assert [item for item, _ in store.stored_events("r")] == items(recommender, 3)[::2]  # the refused one is not there
    store.close()
    with pytest.raises(StoreUnavailable, match=r"postgresql://nobody:\*\*\*@127\.0\.0\.1:1/x cannot be reached"):
        PostgresEvents("postgresql://nobody:secret@127.0.0.1:1/x", connect_timeout=2)


def test_a_sql_ascii_database_gives_the_same_text(recommender: Recommender, postgres):
    """A database created as SQL_ASCII (initdb's default without a locale) hands text back as bytes unless the
    connection asks for UTF8: item ids and states must come back as they went in."""
    url = postgres.fresh_database("ascii", encoding="SQL_ASCII")
    store = UserStore(recommender, url)
    events = [(item, T0 + n) for n, item in enumerate(items(recommender, 3))]
    store.observe("a", events)
    assert store.stored_events("a") == events
    assert [entry.item for entry in store.recommend("a", k=3).items]
    store.close()


def test_a_missing_driver_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name, *args, **kwargs):
        if name == "psycopg":
            raise ImportError("No module named 'psycopg'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(Tim4RecError, match=r"pip install 'tim4rec\[postgres\]'"):
        open_database("postgresql://localhost/x")
