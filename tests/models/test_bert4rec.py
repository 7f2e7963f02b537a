"""BERT4Rec: the mask token is never ranked, inference input, RecBole 1.2's Cloze objective."""

import pytest
import torch
import torch.nn.functional as F

from tests.models.helpers import random_history
from tim4rec.data.batches import Batch
from tim4rec.models import create

N_ITEMS, L = 25, 10
SMALL = {"hidden_size": 16, "inner_size": 32, "n_heads": 2}


def history(lengths=(10, 6, 1, 3)):
    return random_history(N_ITEMS, L, lengths, min_gap=1, max_gap=1000)


def small(**extra):
    torch.manual_seed(0)
    model = create("bert4rec", N_ITEMS, L, **SMALL, **extra)
    with torch.no_grad():  # a trained-looking output bias, so that it matters in the checks
        model.output_bias.normal_()
    return model


def test_mask_token_is_an_input_row_but_never_a_score_column():
    model = small().eval()
    assert model.mask_token == N_ITEMS + 1
    assert model.item_embedding.weight.shape == (N_ITEMS + 2, 16)
    items, lengths, times = history()
    with torch.no_grad():
        model.item_embedding.weight[model.mask_token] = 100.0  # would win every ranking if it were scored
        scores = model.full_sort_predict(items, lengths, times)
        masked, new_len = model.append_mask(items, lengths)
        hidden = model._encode(masked, new_len)[torch.arange(4), new_len - 1]
        with pytest.raises(ValueError, match=f"item id {N_ITEMS + 1} is out of range"):
            model(masked, new_len, times)  # the mask token is the model's own input, not a user's
    assert scores.shape == (4, N_ITEMS + 1)
    expected = hidden @ model.item_embedding.weight[: N_ITEMS + 1].t() + model.output_bias
    torch.testing.assert_close(scores, expected)


def test_without_the_output_head_scores_are_the_plain_tied_product():
    torch.manual_seed(0)
    model = create("bert4rec", N_ITEMS, L, **SMALL, output_head=False).eval()
    assert not hasattr(model, "output_bias") and not hasattr(model, "output_ffn")
    items, lengths, times = history()
    with torch.no_grad():
        scores = model.full_sort_predict(items, lengths, times)
        masked, new_len = model.append_mask(items, lengths)
        blocks = model.dropout(model.layer_norm(model.item_embedding(masked) + model.position_embedding.weight[:L]))
        real = torch.arange(L)[None] < new_len[:, None]
        for block in model.blocks:
            blocks = block(blocks, real=real)
        hidden = blocks[torch.arange(4), new_len - 1]
    torch.testing.assert_close(scores, hidden @ model.item_embedding.weight[: N_ITEMS + 1].t())
    assert model.output_layer()[1] is None


def test_append_mask_after_history_dropping_the_oldest_only_when_full():
    model = small()
    items = torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 4, 5], [7, 0, 0, 0, 0]])
    masked, new_len = model.append_mask(items, torch.tensor([3, 5, 1]))
    m = model.mask_token
    assert masked.tolist() == [[1, 2, 3, m, 0], [2, 3, 4, 5, m], [7, m, 0, 0, 0]]
    assert new_len.tolist() == [4, 5, 2]


def test_padding_content_does_not_influence_real_positions():
    model = small().eval()
    items, lengths, times = history()
    padding = torch.arange(L)[None] >= lengths[:, None]
    noisy = torch.where(padding, torch.randint(1, N_ITEMS + 1, items.shape), items)
    with torch.no_grad():
        torch.testing.assert_close(
            model.full_sort_predict(items, lengths, times), model.full_sort_predict(noisy, lengths, times)
        )
        clean_hidden, noisy_hidden = model(items, lengths, times), model(noisy, lengths, times)
    torch.testing.assert_close(clean_hidden[~padding], noisy_hidden[~padding])


def recbole_loss(model, items, lengths, times, ft_ratio, mask_ratio, seed):
    """RecBole 1.2's mask_itemseq transform and CE loss, written as loops over the same draws."""
    torch.manual_seed(seed)
    fine_tune = float(torch.rand(())) < ft_ratio
    draws = None if fine_tune else torch.rand(items.shape)
    keep = int(mask_ratio * L)
    masked_seq, pairs = items.clone(), []
    for row in range(len(items)):
        index = []
        for position in range(int(lengths[row])):
            if (position == lengths[row] - 1) if fine_tune else draws[row, position] < mask_ratio:
                masked_seq[row, position] = model.mask_token
                index.append(position)
        pairs += [(row, position) for position in index[-keep:] if position > 0]  # RecBole: index 0 = padding
    hidden = model._encode(masked_seq, lengths)
    rows, positions = zip(*pairs)
    logits = hidden[list(rows), list(positions)] @ model.item_embedding.weight[: N_ITEMS + 1].t() + model.output_bias
    return F.cross_entropy(logits, items[list(rows), list(positions)])


@pytest.mark.parametrize("ft_ratio", [0.0, 1.0])
def test_loss_is_recbole_cloze_objective(ft_ratio):
    model = small(ft_ratio=ft_ratio, mask_ratio=0.5).eval()  # eval: no dropout, so the two passes agree
    items, lengths, times = history(lengths=(10, 9, 8, 7))
    torch.manual_seed(3)
    loss = model.calculate_loss(Batch("prefix", items, lengths, times, torch.tensor([1, 2, 3, 4])))
    expected = recbole_loss(model, items, lengths, times, ft_ratio, 0.5, seed=3)
    torch.testing.assert_close(loss, expected)


def test_masks_only_real_positions_and_caps_the_scored_ones():
    model = small(ft_ratio=0.0, mask_ratio=0.9)
    lengths = torch.tensor([10, 4, 1])
    torch.manual_seed(0)
    masked, scored = model.cloze_mask(lengths, L)
    real = torch.arange(L)[None] < lengths[:, None]
    assert not (masked & ~real).any()
    assert (scored.sum(1) <= int(0.9 * L)).all() and not scored[:, 0].any()
    assert not (scored & ~masked).any()


def test_target_is_not_used_and_gradient_flows():
    model = small()
    items, lengths, times = history()
    losses = []
    for target in (torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6, 7, 8])):
        torch.manual_seed(11)
        losses.append(model.calculate_loss(Batch("prefix", items, lengths, times, target)))
    torch.testing.assert_close(losses[0], losses[1])
    losses[0].backward()
    assert model.blocks[0].attention.query.weight.grad.abs().sum() > 0
    assert model.item_embedding.weight.grad[model.mask_token].abs().sum() > 0  # the mask row is learned as an input


def test_batch_without_scored_position_gives_zero_loss():
    model = small(ft_ratio=1.0)  # only position len - 1 is masked, and position 0 is never scored
    items, lengths, times = history(lengths=(1, 1))
    loss = model.calculate_loss(Batch("prefix", items, lengths, times, torch.tensor([1, 2])))
    assert loss.item() == 0.0
    loss.backward()


def test_trains_on_windows(synthetic_inter, tmp_path):
    """train_regime causal: cloze masks over whole windows (the model is not causal, its objective is)."""
    import tim4rec

    results = tim4rec.train(model="bert4rec", dataset=synthetic_inter, output_dir=tmp_path / "run", epochs=1,
                            threads=1, show_progress=False, train_regime="causal", hidden_size=16, n_heads=2,
                            inner_size=32, MAX_ITEM_LIST_LENGTH=8)  # fmt: skip
    assert results["regime"] == "causal" and results["train_samples"] < results["train_targets"]["prefix"]
    assert results["epochs"][0]["loss"] > 0


@pytest.mark.parametrize("last", [True, False])
def test_a_causal_window_takes_its_last_target_into_the_cloze_sequence(last):
    """On a window of training events, the window's final target (the user's most recent training item in its
    last window) joins the sequence, so it can be masked and learned; the inputs alone leave it out."""
    model = small(cloze_last_target=last)
    items, lengths, times = history((10, 6))
    targets = torch.zeros_like(items)
    targets[:, :-1] = items[:, 1:]
    targets[0, 9], targets[1, 5] = 7, 8  # the events after each window's last input
    prepared = model.prepare_training_batch(Batch("causal", items, lengths, times, targets))
    if last:
        assert prepared.item_seq[0].tolist() == items[0, 1:].tolist() + [7]  # full: the oldest input drops out
        assert prepared.item_seq[1, :7].tolist() == items[1, :6].tolist() + [8] and prepared.item_seq_len.tolist() == [
            10,
            7,
        ]
    else:
        assert torch.equal(prepared.item_seq, items) and prepared.item_seq_len.tolist() == [10, 6]
    prefix = model.prepare_training_batch(Batch("prefix", items, lengths, times, torch.tensor([7, 8])))
    assert torch.equal(prefix.item_seq, items)  # RecBole's prefix samples: the history only
