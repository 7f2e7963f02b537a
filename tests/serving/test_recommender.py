"""The Python API: raw ids in and out, unknown ids, windows, exclusions, and the streaming store."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from tim4rec.serving import Recommender, UserStore
from tim4rec.serving.recommender import HistoryError


@pytest.fixture(scope="module")
def recommenders(trained: dict[str, Path]) -> dict[str, Recommender]:
    return {name: Recommender.load(path) for name, path in trained.items()}


def some_user(recommender: Recommender, at_least: int) -> str:
    return next(u for u in recommender.user_index if len(recommender.user_history(u)) >= at_least)


def test_raw_ids_titles_and_unknown_items(recommenders):
    recommender = recommenders["tim4rec"]
    history = recommender.user_history(some_user(recommender, 10))[:10]
    answer = recommender.recommend(history + [("no-such-item", history[-1][1] + 1)], k=5)
    assert answer.unknown_items == ["no-such-item"] and len(answer.items) == 5
    assert all(item.item in recommender.item_ids for item in answer.items)
    assert answer.items[0].title == recommender.item_metadata[answer.items[0].item]["title"]
    assert [i.score for i in answer.items] == sorted((i.score for i in answer.items), reverse=True)
    seen = {item for item, _ in history}
    assert not seen & {i.item for i in answer.items}  # exclude_seen
    assert seen & {i.item for i in recommender.recommend(history, k=400, exclude_seen=False).items}


def test_decreasing_times_and_bad_events_are_errors(recommenders):
    recommender = recommenders["tim4rec"]
    with pytest.raises(HistoryError, match=r"history\[1\]: time 4 is before the previous event's 5"):
        recommender.recommend([("1", 5), ("2", 4)])
    with pytest.raises(HistoryError, match=r"history\[0\]: expected \(item id, unix time\)"):
        recommender.recommend([("1",)])
    with pytest.raises(HistoryError, match="k: expected a positive integer"):
        recommender.recommend([("1", 5)], k=0)


def test_fixed_length_models_keep_the_most_recent_events(recommenders):
    sasrec, tim = recommenders["sasrec"], recommenders["tim4rec"]
    history = sasrec.user_history(some_user(sasrec, 30))
    long = sasrec.recommend(history, k=3)
    recent = sasrec.recommend(history[-20:], k=3, exclude_seen=False)
    assert long.metadata["truncated"] and long.metadata["events_used"] == 20 and not long.metadata["whole_history"]
    full = sasrec.recommend(history[-20:], k=3, exclude_seen=False)
    assert [i.score for i in recent.items] == [i.score for i in full.items]
    answer = tim.recommend(history, k=3)
    assert answer.metadata["whole_history"] and answer.metadata["events_used"] == len(history)


def test_candidates_and_batches(recommenders):
    recommender = recommenders["tim4rec"]
    users = list(recommender.user_index)[:5]
    histories = [recommender.user_history(u) for u in users]
    batch = recommender.recommend_batch(histories, k=4)
    one_by_one = [recommender.recommend(h, k=4) for h in histories]
    for a, b in zip(batch, one_by_one):
        assert [i.item for i in a.items] == [i.item for i in b.items]
        torch.testing.assert_close(torch.tensor([i.score for i in a.items]), torch.tensor([i.score for i in b.items]))
    candidates = ["1", "50", "100", "no-such"]
    ranked = recommender.recommend(histories[0][:3], k=10, candidates=candidates, exclude_seen=False)
    assert {i.item for i in ranked.items} <= {"1", "50", "100"}


def test_one_batched_ranking_equals_sorting_each_row(recommenders):
    """Queries with different k and exclusions, answered together, equal a whole-row sort of each
    history's scores (seen ids and padding removed, ties: the lower id first)."""
    from tim4rec.serving.recommender import Query

    recommender = recommenders["tim4rec"]
    users = list(recommender.user_index)[:6]
    queries = [Query(recommender.user_history(u)[: 5 + 7 * n], k=1 + 9 * n, exclude_seen=n % 2 == 0)
               for n, u in enumerate(users)]  # fmt: skip
    answers = recommender.answer(queries)
    for query, answer in zip(queries, answers):
        encoded = recommender.encode(query.history)
        hidden = recommender.hidden([(encoded.items, encoded.times)])[0]
        weight, bias = recommender.model.output_layer()
        scores = weight @ hidden + (0 if bias is None else bias)
        scores[0] = float("-inf")
        if query.exclude_seen:
            scores[encoded.items] = float("-inf")
        order = torch.sort(-scores, stable=True).indices[: query.k].tolist()
        assert [item.item for item in answer.items] == [recommender.item_tokens[i] for i in order]
        assert [item.score for item in answer.items] == pytest.approx(scores[order].tolist(), rel=1e-5)


@pytest.mark.parametrize("name", ["tim4rec", "sasrec", "bert4rec"])
def test_store_scores_equal_recomputing_from_the_history(name, recommenders, tmp_path: Path):
    recommender = recommenders[name]
    store = UserStore(recommender, tmp_path / "s.sqlite", cache_size=4)
    user = some_user(recommender, 5)
    last = recommender.user_history(user)[-1][1]
    store.observe(user, [("50", last + 10), ("no-such", last + 11), ("100", last + 12)])
    store.observe("newcomer", [("1", 100.0), ("2", 200.0)])
    for who in (user, "newcomer"):
        streamed = store.recommend(who, k=5)
        recomputed = recommender.recommend(store.history(who), k=5)
        assert [i.item for i in streamed.items] == [i.item for i in recomputed.items]
        torch.testing.assert_close(
            torch.tensor([i.score for i in streamed.items]), torch.tensor([i.score for i in recomputed.items]),
            rtol=1e-4, atol=1e-5,
        )  # fmt: skip
    # SASRec streams through its key/value cache while a history fits in L events; BERT4Rec cannot stream
    expected_source = "recomputed from the history" if name == "bert4rec" else "streaming state"
    assert store.recommend("newcomer").metadata["source"] == expected_source
    long_user = some_user(recommender, 25)
    long_source = "streaming state" if name == "tim4rec" else "recomputed from the history"
    assert store.recommend(long_user).metadata["source"] == long_source
    store.close()


def test_streamed_lists_leave_out_every_seen_item_event_after_event(recommenders, tmp_path: Path):
    """Alternating events and lists, items repeated and new: each list from the state leaves out exactly the
    items the history holds (the seen ids grow with the state, never re-read from the history)."""
    recommender = recommenders["tim4rec"]
    store = UserStore(recommender, tmp_path / "s.sqlite", cache_size=4)
    items = ["1", "2", "2", "3", "1", "4", "4", "5", "6", "2"]
    for n, item in enumerate(items):
        store.observe("u", [(item, 1000.0 + 60 * n)])
        streamed = store.recommend("u", k=recommender.n_items)
        assert streamed.metadata["source"] == "streaming state"
        listed = {i.item for i in streamed.items}
        assert not listed & set(items[: n + 1]) and len(listed) == recommender.n_items - len(set(items[: n + 1]))
        recomputed = recommender.recommend(store.history("u"), k=10)
        assert [i.item for i in streamed.items[:10]] == [i.item for i in recomputed.items]
    store.close()


def test_late_events_restarts_and_another_model(recommenders, trained, tmp_path: Path):
    recommender = recommenders["tim4rec"]
    store = UserStore(recommender, tmp_path / "s.sqlite", cache_size=1)
    store.observe("a", [("1", 100.0), ("2", 300.0)])
    result = store.observe("a", [("3", 200.0)])  # late: stored in time order, state rebuilt
    assert result["late"] and [item for item, _ in store.history("a")] == ["1", "3", "2"]
    before = store.recommend("a", k=5)
    store.observe("b", [("4", 1.0)])  # evicts a's state into the database
    store.close()
    reopened = UserStore(recommender, tmp_path / "s.sqlite")
    assert [i.item for i in reopened.recommend("a", k=5).items] == [i.item for i in before.items]
    assert reopened.history("b") == [("4", 1.0)]
    reopened.close()
    other = Recommender.load(trained["sasrec"])  # another model: the stored states do not apply
    assert UserStore(other, tmp_path / "s.sqlite").recommend("a", k=3).metadata["events"] == 3


def test_a_state_without_known_events_is_evicted_and_closed_without_error(recommenders, tmp_path: Path):
    """A streaming user with no known event yet (asked before any event, or only unknown items) has a state
    and no read-out: evicting and closing store it, and it comes back as that user's state."""
    recommender = recommenders["tim4rec"]
    store = UserStore(recommender, tmp_path / "s.sqlite", cache_size=1)
    assert store.recommend("new", k=3).items  # the fresh user's state, no read-out yet
    store.observe("unknown", [("no-such-item", 5.0)])  # evicts "new"; "unknown" knows no item either
    store.close()  # stores "unknown"
    reopened = UserStore(recommender, tmp_path / "s.sqlite")
    assert reopened.recommend("unknown", k=3).metadata["events"] == 0
    reopened.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_states_stored_by_a_gpu_model_come_back_on_its_device(trained, tmp_path: Path):
    """A state is stored as CPU tensors and read back onto the model's device: a CUDA model's stored state
    steps on and gives the list it gave before it was stored."""
    recommender = Recommender.load(trained["tim4rec"], device="cuda")
    store = UserStore(recommender, tmp_path / "s.sqlite", cache_size=1)
    store.observe("a", [("1", 100.0), ("2", 300.0)])
    before = [i.item for i in store.recommend("a", k=5).items]
    store.observe("b", [("4", 1.0)])  # evicts a's state into the database
    stored = torch.load(io.BytesIO(store.db.load_state("a")[2]), weights_only=True)
    assert all(t.device.type == "cpu" for t in [stored["hidden"], *stored["tensors"].values()])
    store.close()
    reopened = UserStore(recommender, tmp_path / "s.sqlite")
    assert [i.item for i in reopened.recommend("a", k=5).items] == before and reopened.sources["loaded"] == 1
    reopened.observe("a", [("3", 400.0)])  # the loaded state steps on the model's device
    assert reopened.recommend("a", k=5).metadata["source"] == "streaming state"
    reopened.close()
