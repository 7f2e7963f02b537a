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


@pytest.mark.parametrize("max_len, stride", [(5, 1), (5, 2), (5, 5), (3, 2), (50, 7)])
def test_overlapping_windows_carry_context_and_each_target_once(max_len, stride):
    """With a window stride s, each window's last s positions are new targets and the positions before
    them context without loss; every training target is taken once and sees at least L - s + 1 events
    (where its user has them), all of them at s = 1."""
    seq, data = make([5, 9, 17, 4, 3], max_len=max_len)
    prefix = seq.train_samples("prefix")
    causal = seq.train_samples("causal", window_stride=stride)
    assert causal.n_targets == prefix.n_targets
    c = seq.batch(causal, np.arange(len(causal)))
    assert sorted(c.target[c.target > 0].tolist()) == sorted(seq.batch(prefix, np.arange(len(prefix))).target.tolist())
    assert int((c.target > 0).sum(1).max()) <= stride
    p = seq.batch(prefix, np.arange(len(prefix)))
    history = {int(t): int(n) for t, n in zip(p.target, p.item_seq_len)}  # ids are unique per event here
    for row in range(len(causal)):
        for position in torch.nonzero(c.target[row] > 0).flatten().tolist():
            seen, full = position + 1, history[int(c.target[row, position])]  # full: the prefix regime's
            assert full >= seen >= min(full, max_len - stride + 1)


def test_stride_one_gives_the_prefix_regimes_loss():
    """Stride 1, dropout off: the summed per-target loss of a causal model equals the prefix regime's."""
    from tim4rec.models import create
    from tim4rec.models.base import cross_entropy_terms

    seq, data = make([5, 9, 17, 4, 3], max_len=6)
    torch.manual_seed(0)
    model = create("tim4rec", data.n_items, 6, hidden_size=8, head_dim=4, d_state=4, chunk_size=4,
                   dropout_prob=0.0, time_drop_out=0.0).eval()  # fmt: skip
    with torch.no_grad():
        sums = {}
        for regime, stride in (("prefix", None), ("causal", 1)):
            samples = seq.train_samples(regime, window_stride=stride)
            sums[regime] = cross_entropy_terms(model, seq.batch(samples, np.arange(len(samples))))
    assert sums["prefix"][1] == sums["causal"][1]
    torch.testing.assert_close(sums["causal"][0], sums["prefix"][0], rtol=1e-5, atol=1e-5)


def test_a_stride_outside_one_to_l_is_an_error():
    from tim4rec.errors import DataError

    seq, _ = make([9], max_len=4)
    with pytest.raises(DataError, match="window_stride: expected from 1 to MAX_ITEM_LIST_LENGTH = 4, got 5"):
        seq.train_samples("causal", window_stride=5)
