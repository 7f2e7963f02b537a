import numpy as np
import pandas as pd
import pytest

from tim4rec.data.preprocess import build_interactions, k_core, parse_interval
from tim4rec.errors import ConfigError, DataError


def frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).astype({"timestamp": "int64"})


def test_parse_interval():
    assert parse_interval("[5,inf)", "k") == (5, float("inf"))
    assert parse_interval("(4,10]", "k") == (5, 10)
    assert parse_interval(3, "k") == (3, float("inf"))
    with pytest.raises(ConfigError, match="k: expected an interval"):
        parse_interval("five", "k")


def test_parse_interval_without_a_lower_bound():
    assert parse_interval("(-inf,5]", "k") == parse_interval("[-inf,5]", "k") == (float("-inf"), 5)
    assert parse_interval("[,]", "k") == (0, float("inf"))


def test_k_core_repeats_until_stable():
    # round 1 drops user d and items z, w; that leaves user c with one event, dropped in round 2.
    rows = [("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("b", "y", 4), ("c", "x", 5), ("c", "z", 6), ("d", "w", 7)]
    kept, rounds = k_core(frame(rows), (2, float("inf")), (2, float("inf")))
    assert kept["user"].tolist() == ["a", "a", "b", "b"]
    assert kept["item"].tolist() == ["x", "y", "x", "y"]
    assert rounds == 3  # two rounds that drop, one that finds nothing to drop


def test_k_core_can_cascade_to_nothing():
    rows = [
        ("a", "x", 1),
        ("a", "y", 2),
        ("a", "x", 7),
        ("b", "x", 3),
        ("b", "z", 4),
        ("b", "y", 8),
        ("c", "z", 5),
        ("c", "y", 6),
    ]
    kept, _ = k_core(frame(rows), (3, float("inf")), (2, float("inf")))
    assert len(kept) == 0


def test_ids_follow_first_appearance_after_filtering_and_sort_is_stable():
    rows = [("u2", "b", 10), ("u1", "a", 30), ("u1", "c", 20), ("u2", "a", 10), ("u1", "b", 20)]
    data = build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None)
    assert data.user_tokens.tolist() == ["[PAD]", "u2", "u1"]
    assert data.item_tokens.tolist() == ["[PAD]", "b", "a", "c"]
    # u2: b@10, a@10 (tie: file order); u1: c@20, b@20 (tie: file order), a@30
    assert data.offsets.tolist() == [0, 2, 5]
    assert data.items.tolist() == [1, 2, 3, 1, 2]
    assert data.timestamps.tolist() == [10, 10, 20, 20, 30]
    assert data.timestamps.dtype == np.int64


def test_recbole_time_order_uses_float32_rounding():
    # 1e9 + 1 and 1e9 + 30 are the same float32 number, so RecBole keeps file order.
    rows = [("u", "late", 1_000_000_030), ("u", "early", 1_000_000_001), ("u", "x", 1_000_001_000)]
    exact = build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None)
    recbole = build_interactions(
        frame(rows), user_inter_num_interval=None, item_inter_num_interval=None, time_order="recbole"
    )
    assert exact.item_tokens[exact.items].tolist() == ["early", "late", "x"]
    assert recbole.item_tokens[recbole.items].tolist() == ["late", "early", "x"]
    assert recbole.timestamps.tolist() == [1_000_000_030, 1_000_000_001, 1_000_001_000]  # kept exact
    values = build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None,
                                time_order="recbole", time_values="recbole")  # fmt: skip
    assert values.item_tokens[values.items].tolist() == ["late", "early", "x"]
    assert values.timestamps.tolist() == [1_000_000_000, 1_000_000_000, 1_000_001_024]  # float32, as RecBole reads
    assert values.stats()["time_values"] == "recbole"


def test_filtering_that_empties_is_an_error():
    with pytest.raises(DataError, match="left no interactions"):
        build_interactions(frame([("a", "x", 1)]), source="tiny.inter")


def test_real_counts_match_recbole():
    from tim4rec.data import load_interactions

    data = load_interactions("ml-100k")
    assert (data.n_users, data.n_items, data.n_interactions) == (943, 1349, 99287)
