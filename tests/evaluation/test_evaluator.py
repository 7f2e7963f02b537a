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
