"""GRU4Rec: RecBole 1.2's layout, read-out in the item-embedding space, streaming."""

import torch

from tests.models.helpers import assert_streaming_matches_full, random_history
from tim4rec.data.batches import Batch
from tim4rec.models import create

N_ITEMS, L = 25, 12
SMALL = {"embedding_size": 8, "hidden_size": 12, "num_layers": 2}


def history(lengths=(12, 7, 1)):
    return random_history(N_ITEMS, L, lengths, min_gap=1, max_gap=1000)


def test_defaults_and_layout():
    model = create("gru4rec", N_ITEMS, L)
    assert (model.regime, model.causal) == ("causal", True)
    assert model.hyperparameters == {"embedding_size": 64, "hidden_size": 128, "num_layers": 2, "dropout_prob": 0.4}
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert shapes == {
        "item_embedding.weight": (N_ITEMS + 1, 64),
        "gru_layers.weight_ih_l0": (3 * 128, 64),
        "gru_layers.weight_hh_l0": (3 * 128, 128),
        "gru_layers.weight_ih_l1": (3 * 128, 128),
        "gru_layers.weight_hh_l1": (3 * 128, 128),
        "dense.weight": (64, 128),
        "dense.bias": (64,),
    }  # no GRU biases, as RecBole


def test_shapes_and_read_out_in_embedding_space():
    torch.manual_seed(0)
    model = create("gru4rec", N_ITEMS, L, **SMALL).eval()
    items, lengths, times = history()
    with torch.no_grad():
        hidden = model(items, lengths, times)
        scores = model.full_sort_predict(items, lengths, times)
    assert hidden.shape == (3, L, 8)  # projected back from hidden_size 12 to embedding_size 8
    assert scores.shape == (3, N_ITEMS + 1)
    expected = hidden[torch.arange(3), lengths - 1] @ model.item_embedding.weight.t()
    torch.testing.assert_close(scores, expected)


def test_padding_content_does_not_change_scores():
    torch.manual_seed(0)
    model = create("gru4rec", N_ITEMS, L, **SMALL).eval()
    items, lengths, times = history()
    noisy = torch.where(torch.arange(L)[None] >= lengths[:, None], torch.randint(1, N_ITEMS + 1, items.shape), items)
    with torch.no_grad():
        torch.testing.assert_close(
            model.full_sort_predict(items, lengths, times), model.full_sort_predict(noisy, lengths, times)
        )


def test_streaming_equals_full_sort_predict():
    torch.manual_seed(0)
    model = create("gru4rec", N_ITEMS, L, **SMALL).eval()
    items, _, times = history(lengths=(12, 12, 12))
    assert model.init_state(3)["hidden"].shape == (3, 2, 12)
    streamed = assert_streaming_matches_full(model, items, times, atol=1e-4)
    assert len(streamed) == L and all(scores.shape == (3, N_ITEMS + 1) for scores in streamed)


def test_prefix_loss_is_cross_entropy_at_the_read_out():
    torch.manual_seed(0)
    model = create("gru4rec", N_ITEMS, L, **SMALL).eval()
    items, lengths, times = history()
    target = torch.tensor([3, 4, 5])
    loss = model.calculate_loss(Batch("prefix", items, lengths, times, target))
    expected = torch.nn.functional.cross_entropy(model.full_sort_predict(items, lengths, times), target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert model.gru_layers.weight_hh_l1.grad.abs().sum() > 0
