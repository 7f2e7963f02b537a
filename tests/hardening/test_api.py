"""The Python API and the model API: natural arguments work, wrong ones get a clear exception (training,
models, recommendations and the user store); a diverging loss stops a run cleanly."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import sqlite3
from pathlib import Path

import pytest
import torch

import tim4rec
from tests.hardening.helpers import TINY_TRAIN, assert_clear_error, cli
from tests.models.test_contract import IDS, N_ITEMS, VARIANTS, L, build
from tim4rec.data.batches import Batch
from tim4rec.errors import ConfigError, Tim4RecError
from tim4rec.serving import Recommender
from tim4rec.serving.recommender import HistoryError, Query
from tim4rec.serving.store import UserStore

TINY = {"hidden_size": 8, "n_heads": 2, "inner_size": 16, "n_layers": 1, "MAX_ITEM_LIST_LENGTH": 8}


def test_train_takes_a_path_object_and_keyword_settings(synthetic_inter: Path, tmp_path: Path):
    results = tim4rec.train(model="sasrec", dataset=synthetic_inter, output_dir=tmp_path / "run", epochs=1, threads=1,
                            show_progress=False, **TINY)  # fmt: skip
    assert results["status"] == "finished" and results["dataset"] == str(synthetic_inter)


BAD_CALLS = {
    "config a string": (dict(config="sasrec"), "config: expected a dict"),
    "output_dir a number": (dict(config={"model": "sasrec"}, output_dir=3), "output_dir: expected a path"),
    "set_args numbers": (dict(config={"model": "sasrec"}, set_args=[1, 2]), "set_args: expected 'key=value'"),
    "config_files a number": (dict(config={"model": "sasrec"}, config_files=5), "config_files: expected a path"),
    "resume a word": (dict(config={"model": "sasrec", "dataset": "x"}, resume="no"), "resume: expected true or false"),
    "dataset a number": (dict(config={"model": "sasrec", "dataset": 5}), "dataset: expected a non-empty string"),
}


@pytest.mark.parametrize("case", BAD_CALLS, ids=list(BAD_CALLS))
def test_wrong_argument_types(case):
    arguments, message = BAD_CALLS[case]
    with pytest.raises(ConfigError, match=message):
        tim4rec.train(**arguments)


def empty() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(0, L, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, L, dtype=torch.long)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_empty_batches(name, extra):
    model = build(name, extra)
    items, lengths, times = empty()
    assert model.full_sort_predict(items, lengths, times).shape == (0, N_ITEMS + 1)
    loss = model.calculate_loss(Batch("prefix", items, lengths, times, lengths.clone()))
    assert float(loss.detach()) == 0.0
    if model.streaming:
        scores, state = model.step(model.init_state(0), lengths, lengths)
        assert scores.shape == (0, N_ITEMS + 1) and len(state) == 0


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_histories_longer_than_max_seq_length(name, extra):
    model = build(name, extra).eval()
    n = L + 5
    items, lengths, times = torch.randint(1, N_ITEMS + 1, (2, n)), torch.full((2,), n), torch.arange(n).repeat(2, 1)
    if model.fixed_length:
        with pytest.raises(ValueError, match=f"at most max_seq_length = {L} positions, got {n}"):
            model.full_sort_predict(items, lengths, times)
    else:  # recurrent models run at any length
        assert model.full_sort_predict(items, lengths, times).shape == (2, N_ITEMS + 1)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
@pytest.mark.parametrize("bad", [-1, N_ITEMS + 1])
def test_item_ids_out_of_range(name, extra, bad):
    model = build(name, extra).eval()
    items = torch.full((2, L), 3).index_fill(1, torch.tensor([2]), bad)
    with pytest.raises(ValueError, match=f"item id {bad} is out of range"):
        model.full_sort_predict(items, torch.full((2,), L), torch.arange(L).repeat(2, 1))
    if model.streaming:
        with pytest.raises(ValueError, match=f"item id {bad} is out of range"):
            model.step(model.init_state(1), torch.tensor([bad]), torch.tensor([5]))


def test_bert4rec_refuses_its_mask_token_as_an_item():
    model = build("bert4rec", {})
    items = torch.full((1, L), model.mask_token)
    with pytest.raises(ValueError, match=f"item id {model.mask_token} is out of range"):
        model.full_sort_predict(items, torch.tensor([L]), torch.zeros(1, L, dtype=torch.long))


def test_an_exploding_loss_stops_the_run(synthetic_inter: Path, tmp_path: Path, capsys):
    code, err = cli(capsys, "train", *TINY_TRAIN, "--dataset", synthetic_inter, "--output", tmp_path / "run",
                    "--set", "learning_rate=1000", "--set", "epochs=5")  # fmt: skip
    assert_clear_error(code, err, "diverged", "lower learning_rate")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "failed" and results["stopped_by"] in ("diverged", "nan_loss")


# -- recommendations and the user store -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recommender(trained) -> Recommender:
    return Recommender.load(trained["tim4rec"])


def a_user(recommender: Recommender) -> str:
    return next(u for u in recommender.user_index if len(recommender.user_history(u)) >= 10)


BAD_QUERIES = {
    "history None": (dict(history=None), "history: expected a list of (item id, unix time) pairs"),
    "history a string": (dict(history="50"), "history: expected a list"),
    "bare item ids": (dict(history=["i1", "i2"]), "history[0]: expected (item id, unix time)"),
    "a triple": (dict(history=[("50", 1, 2)]), "history[0]: expected (item id, unix time)"),
    "a record with extra keys": (dict(history=[{"item": "50", "time": 1, "x": 0}]), "history[0]: expected"),
    "time 1e30": (dict(history=[("50", 1e30)]), "history[0]: time is out of range"),
    "time 2**64": (dict(history=[("50", 2**64)]), "history[0]: time is out of range"),
    "time 10**400": (dict(history=[("50", 10**400)]), "history[0]: time is out of range"),
    "time NaN": (dict(history=[("50", 5), ("1", math.nan)]), "history[1]: time is not a finite number"),
    "time -inf": (dict(history=[("50", -math.inf)]), "history[0]: time is not a finite number"),
    "time True": (dict(history=[("50", True)]), "history[0]: time expected a number of unix seconds"),
    "time as text": (dict(history=[("50", "5")]), "history[0]: time expected a number of unix seconds"),
    "item None": (dict(history=[(None, 5)]), "history[0]: expected an item id"),
    "item empty": (dict(history=[("", 5)]), "history[0]: expected an item id"),
    "sub-second times decreasing": (dict(history=[("50", 100.7), ("1", 100.2)]), "time 100.2 is before"),
    "k True": (dict(history=[("50", 5)], k=True), "k: expected a positive integer, got True"),
    "k 2.0": (dict(history=[("50", 5)], k=2.0), "k: expected a positive integer"),
    "exclude_seen a word": (dict(history=[("50", 5)], exclude_seen="no"), "exclude_seen: expected true or false"),
    "candidates a string": (dict(history=[("50", 5)], candidates="50"), "candidates: expected a list of item ids"),
}


@pytest.mark.parametrize("case", BAD_QUERIES, ids=list(BAD_QUERIES))
def test_a_bad_query_is_a_history_error(case, recommender: Recommender):
    arguments, message = BAD_QUERIES[case]
    with pytest.raises(HistoryError, match=re.escape(message)):
        recommender.recommend(**arguments)


def test_a_bad_query_in_a_batch_fails_alone(recommender: Recommender):
    good = Query([("50", 5), ("1", 6)], k=3)
    outcomes = recommender.answer_each([good, Query([("50", 1e30)]), Query(["i1"]), good])
    assert isinstance(outcomes[1], HistoryError) and isinstance(outcomes[2], HistoryError)
    alone = recommender.recommend(good.history, k=3)
    for answer in (outcomes[0], outcomes[3]):
        assert [i.item for i in answer.items] == [i.item for i in alone.items]
        assert [i.score for i in answer.items] == pytest.approx([i.score for i in alone.items], rel=1e-5)


@pytest.fixture
def store(recommender: Recommender, tmp_path: Path) -> UserStore:
    opened = UserStore(recommender, tmp_path / "users.sqlite")
    yield opened
    if opened.db is not None:
        with contextlib.suppress(Exception):
            opened.close()


BAD_EVENTS = {
    "events None": (None, "events: expected a list"),
    "bare item ids": (["50"], "events[0]: expected (item id, unix time)"),
    "time NaN": ([("50", 5), ("1", math.nan)], "events[1]: time is not a finite number"),
    "time 1e30": ([("50", 1e30)], "events[0]: time is out of range"),
    "time 1e300": ([("50", 5), ("1", 1e300)], "events[1]: time is out of range"),
    "item a list": ([(["50"], 5)], "events[0]: expected an item id"),
}


@pytest.mark.parametrize("case", BAD_EVENTS, ids=list(BAD_EVENTS))
def test_a_bad_event_is_refused_and_nothing_is_stored(case, store: UserStore):
    events, message = BAD_EVENTS[case]
    store.observe("u", [("50", 1)])
    with pytest.raises(HistoryError, match=re.escape(message)):
        store.observe("u", events)
    assert store.history("u") == [("50", 1.0)]  # the good events of the same call were not stored either
    assert store.recommend("u").metadata["events"] == 1


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(cache_size=-1), ConfigError, "cache_size: expected a non-negative integer, got -1"),
        (dict(cache_size=True), ConfigError, "cache_size: expected a non-negative integer"),
        (dict(path="no-such-folder/users.sqlite"), Tim4RecError, "folder no-such-folder does not exist"),
        (dict(path="TEXT"), Tim4RecError, "cannot open as the user store's SQLite database"),
    ],
    ids=["cache_size -1", "cache_size True", "a missing folder", "a text file"],
)
def test_a_store_that_cannot_be_opened(arguments, error, message, recommender: Recommender, tmp_path: Path):
    if arguments.get("path") == "TEXT":
        arguments = {"path": tmp_path / "notes.txt"}
        arguments["path"].write_text("not a database\n" * 100)
    with pytest.raises(error, match=re.escape(message)):
        UserStore(recommender, **arguments)


def test_store_arguments_of_the_wrong_type(store: UserStore):
    with pytest.raises(HistoryError, match="user: expected a user id"):
        store.observe(None, [("50", 1)])
    with pytest.raises(HistoryError, match="k: expected a positive integer, got True"):
        store.recommend("u", k=True)


def recomputed(store: UserStore, user: str, k: int = 10) -> list[str]:
    return [item.item for item in store.recommender.recommend(store.history(user), k).items]


def served(store: UserStore, user: str, k: int = 10) -> list[str]:
    return [item.item for item in store.recommend(user, k).items]


def test_an_unknown_item_never_breaks_a_known_user(store: UserStore, recommender: Recommender, tmp_path: Path):
    user = a_user(recommender)
    last = recommender.user_history(user)[-1][1]
    store.observe(user, [("50", last + 1)])
    assert store.observe(user, [("no-such-item", last + 2)])["unknown_items"] == ["no-such-item"]
    answer = store.recommend(user)
    assert answer.metadata["source"] == "streaming state" and answer.unknown_items == ["no-such-item"]
    assert served(store, user) == recomputed(store, user)
    store.close()  # the state is written; a restarted store reads it back
    reopened = UserStore(recommender, tmp_path / "users.sqlite")
    assert served(reopened, user) == recomputed(reopened, user)
    reopened.close()


def test_late_events_within_a_second_keep_their_order(store: UserStore):
    assert store.observe("new", [("50", 100.7)])["late"] is False
    assert store.observe("new", [("1", 100.2)])["late"] is True
    assert store.history("new") == [("1", 100.2), ("50", 100.7)]
    assert served(store, "new") == recomputed(store, "new")
    assert store.observe("new", [("100", 100.7)])["late"] is False  # the same time is not late


PICKLE_PAYLOAD = b"cos\nsystem\n(S'touch PWNED'\ntR."


@pytest.mark.parametrize(
    "blob", [b"\x00garbage\xff" * 20, PICKLE_PAYLOAD, b"ZIP"], ids=["random bytes", "pickle", "zip"]
)
def test_a_stored_state_that_cannot_be_read_is_rebuilt(
    blob, store: UserStore, recommender: Recommender, tmp_path: Path, caplog, monkeypatch
):
    if blob == b"ZIP":  # a real torch file holding the wrong things
        buffer = io.BytesIO()
        torch.save(
            {"tensors": {"h": torch.zeros(1, 3)}, "hidden": torch.zeros(2), "events": 2, "last_time": 1.0}, buffer
        )
        blob = buffer.getvalue()
    monkeypatch.chdir(tmp_path)
    store.observe("u", [("50", 1), ("1", 2)])
    expected = served(store, "u")
    store.close()
    database = sqlite3.connect(tmp_path / "users.sqlite")
    with database:
        assert database.execute("UPDATE states SET blob = ? WHERE user = 'u'", (blob,)).rowcount == 1
    database.close()
    reopened = UserStore(recommender, tmp_path / "users.sqlite")
    with caplog.at_level(logging.WARNING, logger="tim4rec.serving.store"):
        assert served(reopened, "u") == expected
    assert "the stored state cannot be used" in caplog.text and "rebuilt from the events" in caplog.text
    assert not (tmp_path / "PWNED").exists()
    reopened.close()
