import torch

from tests.data.test_preprocess import frame
from tim4rec.data.batches import SequenceData
from tim4rec.data.preprocess import build_interactions
from tim4rec.data.split import LeaveOneOut
from tim4rec.evaluation.evaluator import evaluate


class HistoryLover(torch.nn.Module):
    """Scores every item in the history 2.0 and every other item 0: the hidden state is the history's
    multi-hot vector, the output layer twice the identity."""

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items

    def predict_hidden(self, item_seq, item_seq_len, timestamps):
        hidden = torch.zeros(len(item_seq), self.n_items + 1)
        for row in range(len(item_seq)):
            hidden[row, item_seq[row, : item_seq_len[row]]] = 1.0
        return hidden

    def output_layer(self):
        return 2.0 * torch.eye(self.n_items + 1), None


def test_padding_never_ranked_and_history_masking():
    # one user: a b c d e f ; test target f, history a..e all scored 2.0, f scored 0 like the rest
    rows = [("u", item, t) for t, item in enumerate("abcdef")] + [("v", item, t) for t, item in enumerate("fedcbg")]
    data = build_interactions(frame(rows), user_inter_num_interval=None, item_inter_num_interval=None)
    sequences = SequenceData(data, LeaveOneOut()(data), max_seq_length=10)
    model = HistoryLover(data.n_items)
    test = sequences.evaluation_samples("test")
    plain = evaluate(model, sequences, test, ks=(1, 10))
    masked = evaluate(model, sequences, test, ks=(1, 10), mask_history=True)
    # 7 items; unmasked: 5 history items above the target and ties with the others -> rank 7 for both users
    assert plain["hit@1"] == 0.0 and plain["mrr@10"] == 1 / 7
    # masked: history at -inf, the target ties with the one other unseen item -> rank 2
    assert masked["hit@1"] == 0.0 and masked["mrr@10"] == 1 / 2


def test_streaming_evaluation_equals_windowed_when_the_window_holds_every_event(tmp_path, monkeypatch):
    """With L at least every user's history, feeding events one by one gives the windowed metrics."""
    import torch

    from tests.conftest import synthetic_rows, write_inter
    from tim4rec.data import load_interactions
    from tim4rec.data.batches import SequenceData
    from tim4rec.data.split import LeaveOneOut
    from tim4rec.evaluation.evaluator import evaluate, evaluate_streaming
    from tim4rec.models import create

    data = load_interactions(write_inter(tmp_path / "d.inter", synthetic_rows()))
    sequences = SequenceData(data, LeaveOneOut()(data), max_seq_length=20)
    torch.manual_seed(0)
    model = create("tim4rec", data.n_items, 20, hidden_size=16, head_dim=8, d_state=8, chunk_size=4).eval()
    test = sequences.evaluation_samples("test")
    windowed = evaluate(model, sequences, test)
    bars = []

    class Bar:  # the progress bar, counted: its total is every step the evaluation takes
        def __init__(self, total, **_):
            self.total, self.done = total, 0
            bars.append(self)

        def update(self, count):
            self.done += count

        def close(self):
            pass

    monkeypatch.setattr("tim4rec.evaluation.evaluator.tqdm", Bar)
    streamed = evaluate_streaming(model, sequences, test, batch_size=7)
    assert len(bars) == 1 and bars[0].done == bars[0].total > len(test)
    assert windowed.keys() == streamed.keys()
    for key in windowed:
        assert abs(windowed[key] - streamed[key]) < 1e-6, key


def test_a_saved_model_evaluated_with_another_event_order(tmp_path):
    """``evaluate --time-order recbole``: the same saved model on the dataset read in RecBole's float32 order,
    whose held-out events differ where events fall in the same 64 s; only the order settings may change."""
    import subprocess
    import sys

    import numpy as np
    import pytest

    import tim4rec
    from tests.conftest import write_inter
    from tim4rec.errors import Tim4RecError
    from tim4rec.evaluation.evaluator import evaluate_saved_model, load_for_evaluation

    rng = np.random.default_rng(0)
    rows = []
    for user in range(30):  # bursts of events seconds apart: float32 time (64 s steps near 1e9) reorders them
        times = 1_000_000_000 + np.cumsum(rng.integers(1, 20, size=12))
        rows += [(f"u{user}", f"i{item}", 3, int(t)) for item, t in zip(rng.choice(40, 12, replace=False), times)]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    dataset = write_inter(tmp_path / "bursts.inter", rows)
    tim4rec.train(model="tim4rec", dataset=dataset, output_dir=tmp_path / "run", epochs=1, threads=1,
                  show_progress=False, MAX_ITEM_LIST_LENGTH=10, hidden_size=16, head_dim=8, d_state=8,
                  chunk_size=4)  # fmt: skip
    model = tmp_path / "run" / "best.pt"
    held_out = {}
    for order in ("exact", "recbole"):
        data = load_for_evaluation(model, {"time_order": order})[2]
        held_out[order] = data.items[data.evaluation_samples("test").targets]  # (users,) test items
    assert (held_out["exact"] != held_out["recbole"]).any()
    default, reordered = evaluate_saved_model(model), evaluate_saved_model(model, data_order={"time_order": "recbole"})
    assert default["metrics"] != reordered["metrics"] and reordered["config"].time_order == "recbole"
    with pytest.raises(Tim4RecError, match="only time_order, time_values may change"):
        load_for_evaluation(model, {"MAX_ITEM_LIST_LENGTH": "5"})
    done = subprocess.run([sys.executable, "-m", "tim4rec", "evaluate", str(model), "--time-order", "recbole",
                           "--time-values", "recbole"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "ndcg@10" in done.stdout.lower(), done.stderr[-2000:]
