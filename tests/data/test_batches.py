import numpy as np
import pytest
import torch

from tests.data.test_preprocess import frame
from tim4rec.data.batches import SequenceData
from tim4rec.data.preprocess import build_interactions
from tim4rec.data.split import LeaveOneOut


def make(lengths, max_len):
    rows, t = [], 0
    for user, n in enumerate(lengths):
        for k in range(n):
            t += 1
            rows.append((f"u{user}", f"i{user}_{k}", t))
    data = build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None)
    return SequenceData(data, LeaveOneOut()(data), max_len), data


def test_leave_one_out_targets_and_histories():
    seq, data = make([6], max_len=3)
    items = data.items.tolist()  # [1..6]
    test = seq.batch(seq.evaluation_samples("test"), [0])
    valid = seq.batch(seq.evaluation_samples("valid"), [0])
    assert test.target.tolist() == [items[5]]
    assert test.item_seq.tolist() == [items[2:5]]
    assert valid.target.tolist() == [items[4]]
    assert valid.item_seq.tolist() == [items[1:4]]
    assert test.timestamps.tolist() == [data.timestamps[2:5].tolist()]


def test_prefix_samples_right_padded():
    seq, data = make([6], max_len=3)
    samples = seq.train_samples("prefix")
    batch = seq.batch(samples, np.arange(len(samples)))
    # targets e1..e3 (e4 is validation, e5 test)
    assert batch.target.tolist() == [2, 3, 4]
    assert batch.item_seq.tolist() == [[1, 0, 0], [1, 2, 0], [1, 2, 3]]
    assert batch.item_seq_len.tolist() == [1, 2, 3]
    assert batch.timestamps[0].tolist() == [1, 0, 0]


@pytest.mark.parametrize("max_len", [1, 2, 3, 5, 50])
def test_causal_windows_cover_each_prefix_target_once(max_len):
    seq, data = make([5, 9, 17, 4, 3], max_len=max_len)
    prefix = seq.train_samples("prefix")
    causal = seq.train_samples("causal")
    assert prefix.n_targets == causal.n_targets == sum(n - 3 for n in [5, 9, 17, 4, 3])
    p = seq.batch(prefix, np.arange(len(prefix)))
    c = seq.batch(causal, np.arange(len(causal)))
    causal_targets = sorted(c.target[c.target > 0].tolist())
    assert causal_targets == sorted(p.target.tolist())
    # inside a window, position j's target is the event right after position j
    for row in range(len(causal)):
        n = int(c.item_seq_len[row])
        assert c.target[row, : n - 1].tolist() == c.item_seq[row, 1:n].tolist()
        assert (c.target[row, n:] == 0).all() and (c.item_seq[row, n:] == 0).all()
    # the most recent window of each user is a full window when the user has enough targets
    assert int(c.item_seq_len.max()) == min(max_len, 17 - 3)


def test_iterate_shuffles_reproducibly():
    seq, _ = make([20, 20], max_len=4)
    samples = seq.train_samples("prefix")
    first = [b.target.tolist() for b in seq.iterate(samples, 5, generator=torch.Generator().manual_seed(1))]
    again = [b.target.tolist() for b in seq.iterate(samples, 5, generator=torch.Generator().manual_seed(1))]
    other = [b.target.tolist() for b in seq.iterate(samples, 5, generator=torch.Generator().manual_seed(2))]
    assert first == again != other
    assert sorted(sum(first, [])) == sorted(seq.batch(samples, np.arange(len(samples))).target.tolist())
