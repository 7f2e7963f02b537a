"""Caser: RecBole 1.2's network (without the user embedding), padding behaviour, regulariser."""

import pytest
import torch
import torch.nn.functional as F

from tests.models.helpers import random_history
from tim4rec.data.batches import Batch
from tim4rec.models import create

N_ITEMS, L = 25, 8
SMALL = {"embedding_size": 6, "nv": 2, "nh": 3}


def history():
    return random_history(N_ITEMS, L, (8, 5, 1), min_gap=1, max_gap=1000)


def small(**extra):
    torch.manual_seed(0)
    return create("caser", N_ITEMS, L, **SMALL, **extra)


def recbole_forward(model, items):
    """RecBole 1.2's Caser.forward on the raw right-padded ids, minus the user term, with the Conv2d modules."""
    image = model.item_embedding(items)[:, None]  # (B, 1, L, d)
    vertical = model.conv_v(image).reshape(len(items), -1)
    horizontal = []
    for conv in model.conv_h:
        out = F.relu(conv(image).squeeze(3))  # (B, nh, L - h + 1)
        horizontal.append(F.max_pool1d(out, out.size(2)).squeeze(2))
    z = F.relu(model.fc1(torch.cat([vertical, *horizontal], 1)))
    return F.relu(model.fc2(z))


def test_defaults_and_shapes():
    model = create("caser", N_ITEMS, L)
    assert (model.regime, model.causal) == ("prefix", False)
    assert model.hyperparameters == {"embedding_size": 64, "nv": 4, "nh": 8, "dropout_prob": 0.2, "reg_weight": 1e-4}
    assert len(model.conv_h) == L and model.conv_h[-1].weight.shape == (8, 1, L, 64)
    assert model.fc1.in_features == 4 * 64 + 8 * L and model.fc2.in_features == 64  # no user embedding
    items, lengths, times = history()
    hidden = model(items, lengths, times)
    assert hidden.shape == (3, L, 64) and torch.equal(hidden[:, 0], hidden[:, -1])
    assert model.full_sort_predict(items, lengths, times).shape == (3, N_ITEMS + 1)


def test_matches_recbole_forward():
    model = small().eval()
    items, lengths, times = history()
    with torch.no_grad():
        expected = recbole_forward(model, items) @ model.item_embedding.weight.t()
        torch.testing.assert_close(model.full_sort_predict(items, lengths, times), expected)


def test_padding_slots_read_as_padding_whatever_they_hold():
    model = small().eval()
    items, lengths, times = history()
    noisy = torch.where(torch.arange(L)[None] >= lengths[:, None], torch.randint(1, N_ITEMS + 1, items.shape), items)
    with torch.no_grad():
        clean = model.full_sort_predict(items, lengths, times)
        torch.testing.assert_close(clean, model.full_sort_predict(noisy, lengths, times))
        # as in RecBole, the padding row is a vector the convolutions see in short histories
        assert model.item_embedding.weight[0].abs().sum() > 0
        model.item_embedding.weight[0] += 1.0
        moved = model.full_sort_predict(items, lengths, times)
    torch.testing.assert_close(moved[0, 1:], clean[0, 1:])  # the full history has no padding slot
    assert not torch.allclose(moved[1, 1:], clean[1, 1:]) and not torch.allclose(
        moved[2, 1:], clean[2, 1:]
    )  # short ones do


def test_regulariser_is_added_to_the_loss():
    items, lengths, times = history()
    batch = Batch("prefix", items, lengths, times, torch.tensor([1, 2, 3]))
    plain = small(reg_weight=0.0).eval()
    regularised = small(reg_weight=1e-2).eval()  # same seed: same weights
    weights = [
        regularised.item_embedding.weight,
        regularised.conv_v.weight,
        regularised.fc1.weight,
        regularised.fc2.weight,
    ]
    weights += [conv.weight for conv in regularised.conv_h]
    expected = 1e-2 * sum(weight.norm(2) for weight in weights)
    with torch.no_grad():
        difference = regularised.calculate_loss(batch) - plain.calculate_loss(batch)
    assert difference > 0
    torch.testing.assert_close(difference, expected)
    loss = regularised.calculate_loss(batch)
    loss.backward()
    assert regularised.conv_h[-1].weight.grad.abs().sum() > 0


def test_rejects_causal_windows_and_pads_short_inputs():
    model = small().eval()
    items, lengths, times = history()
    with pytest.raises(ValueError, match="prefix"):
        model.calculate_loss(Batch("causal", items, lengths, times, items))
    short = lengths.clamp(max=5)
    with torch.no_grad():  # fewer than L columns: padded to L, the same scores as the padded input
        torch.testing.assert_close(
            model.full_sort_predict(items[:, :5], short, times[:, :5]), model.full_sort_predict(items, short, times)
        )
