"""The splits: leave-one-out and the global temporal split, each a small unit."""

import numpy as np
import pytest

from tests.data.test_preprocess import frame
from tim4rec.data.batches import SequenceData
from tim4rec.data.preprocess import build_interactions
from tim4rec.data.split import NONE, LeaveOneOut, TemporalSplit, make_split
from tim4rec.errors import ConfigError, DataError


def interactions(times_per_user: dict[str, list[int]]):
    rows = [(user, f"{user}{k}", t) for user, times in times_per_user.items() for k, t in enumerate(times)]
    return build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None)


def events(data, positions) -> list[tuple[str, int]]:
    """(item token, time) of flat event positions."""
    return [(data.item_tokens[data.items[p]], int(data.timestamps[p])) for p in positions]


def test_leave_one_out_is_last_second_to_last_and_the_rest():
    data = interactions({"a": [1, 2, 3, 4, 5], "b": [1, 2], "c": [7, 8, 9]})
    split = LeaveOneOut()(data)
    assert split.users.tolist() == [1, 3]  # b has 2 events: left out
    assert events(data, split.test) == [("a4", 5), ("c2", 9)]
    assert events(data, split.valid) == [("a3", 4), ("c1", 8)]
    assert events(data, range(split.train_first[0], split.train_last[0] + 1)) == [("a1", 2), ("a2", 3)]
    assert split.train_last[1] < split.train_first[1]  # c: no training target (e_0 is history only)


def test_leave_one_out_needs_three_events():
    with pytest.raises(DataError, match="fewer than 3 events"):
        LeaveOneOut()(interactions({"a": [1, 2], "b": [3, 4]}))


def test_temporal_split_trains_before_the_cut_and_evaluates_the_next_events():
    data = interactions({"a": [1, 2, 3, 10, 11, 12], "b": [4, 10], "c": [11, 12], "d": [2, 5, 6, 7]})
    split = TemporalSplit(cut=10)(data)
    assert split.users.tolist() == [1, 2, 4]  # c has no event before the cut
    a, b, d = 0, 1, 2
    assert events(data, range(split.train_first[a], split.train_last[a] + 1)) == [("a1", 2), ("a2", 3)]
    assert events(data, [split.valid[a], split.test[a]]) == [("a3", 10), ("a4", 11)]
    assert events(data, [split.valid[b]]) == [("b1", 10)] and split.test[b] == NONE  # one event after the cut
    assert split.valid[d] == NONE and split.test[d] == NONE  # nothing after the cut: training only
    assert events(data, range(split.train_first[d], split.train_last[d] + 1)) == [("d1", 5), ("d2", 6), ("d3", 7)]
    # every training target is before the cut, every evaluation target at or after it
    train = np.concatenate([np.arange(f, last + 1) for f, last in zip(split.train_first, split.train_last)])
    assert (data.timestamps[train] < 10).all()
    users, targets = split.evaluation_targets("test")
    assert users.tolist() == [1] and (data.timestamps[targets] >= 10).all()


def test_temporal_samples_see_every_earlier_event():
    data = interactions({"a": [1, 2, 3, 10, 11, 12], "b": [4, 10, 13]})
    sequences = SequenceData(data, TemporalSplit(cut=10)(data), max_seq_length=10)
    test = sequences.batch(sequences.evaluation_samples("test"), [0, 1])
    assert test.item_seq_len.tolist() == [4, 2]  # a: 1, 2, 3, 10 before its test event 11
    assert test.timestamps[0, :4].tolist() == [1, 2, 3, 10]


def test_temporal_cut_from_a_quantile():
    data = interactions({"a": list(range(1, 11)), "b": list(range(1, 11))})
    assert TemporalSplit(quantile=0.5).cut_time(data) == 5.5


def test_temporal_split_without_evaluation_targets_is_an_error():
    with pytest.raises(DataError, match="temporal split at 100 s: no user has an event after the cut"):
        TemporalSplit(cut=100)(interactions({"a": [1, 2, 3]}))


def test_unknown_split_and_evaluation_split_are_errors():
    with pytest.raises(ConfigError, match="split: expected 'leave_one_out' or 'temporal'"):
        make_split("random")
    split = LeaveOneOut()(interactions({"a": [1, 2, 3]}))
    with pytest.raises(ValueError, match="unknown evaluation split 'tset'"):
        split.evaluation_targets("tset")
