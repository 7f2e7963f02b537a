"""Caser: RecBole 1.2's network (without the user embedding), padding behaviour, regulariser."""

import numpy as np
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
    assert (model.regime, model.causal, model.history_span) == ("prefix", True, L)
    assert model.hyperparameters == {"embedding_size": 64, "nv": 4, "nh": 8, "dropout_prob": 0.2, "reg_weight": 1e-4}
    assert len(model.conv_h) == L and model.conv_h[-1].weight.shape == (8, 1, L, 64)
    assert model.fc1.in_features == 4 * 64 + 8 * L and model.fc2.in_features == 64  # no user embedding
    items, lengths, times = history()
    hidden = model(items, lengths, times)
    assert hidden.shape == (3, L, 64)
    assert model.full_sort_predict(items, lengths, times).shape == (3, N_ITEMS + 1)


def test_matches_recbole_forward():
    model = small().eval()
    items, lengths, times = history()
    with torch.no_grad():
        expected = recbole_forward(model, items) @ model.item_embedding.weight.t()
        torch.testing.assert_close(model.full_sort_predict(items, lengths, times), expected)


def test_gradients_match_recbole():
    """Every parameter's gradient through the Fourier-transform correlations and the sliding maxima equals
    autograd's through RecBole's Conv2d modules (the causal form is checked against this form below)."""
    model = small(dropout_prob=0.0)
    with torch.no_grad():
        model.item_embedding.weight[0].normal_()
    items, lengths, times = history()
    grads = []
    for scores in (lambda: model.full_sort_predict(items, lengths, times),
                   lambda: recbole_forward(model, items) @ model.item_embedding.weight.t()):  # fmt: skip
        model.zero_grad()
        (scores()[:, 1:] * torch.linspace(-1.0, 1.0, N_ITEMS)).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for ours, recbole in zip(*grads):
        torch.testing.assert_close(ours, recbole, rtol=1e-4, atol=1e-6)


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


def test_pads_short_inputs():
    model = small().eval()
    items, lengths, times = history()
    short = lengths.clamp(max=5)
    with torch.no_grad():  # fewer than L columns: padded to L, the same scores as the padded input
        torch.testing.assert_close(
            model.full_sort_predict(items[:, :5], short, times[:, :5]), model.full_sort_predict(items, short, times)
        )


def prefix_vectors(model, items, lengths, rows_positions):
    """The prefix form on each (row, t): the last min(t + 1, L) events up to t as their own history."""
    histories = torch.zeros(len(rows_positions), model.max_seq_length, dtype=torch.long)
    sizes = torch.zeros(len(rows_positions), dtype=torch.long)
    for i, (row, t) in enumerate(rows_positions):
        begin = max(0, t + 1 - model.max_seq_length)
        histories[i, : t + 1 - begin] = items[row, begin : t + 1]
        sizes[i] = t + 1 - begin
    return model.encode(histories, sizes)


@pytest.mark.parametrize("span, width", [(16, 40), (16, 16), (16, 9), (1, 5)])
def test_every_position_of_a_window_is_its_prefix_history(span, width):
    """The causal form (forward over windows, here up to 2.5 L) equals the prefix form at sampled positions."""
    torch.manual_seed(0)
    model = create("caser", N_ITEMS, span, **SMALL).eval()
    with torch.no_grad():
        model.item_embedding.weight[0].normal_()  # a padding row far from zero: a wrong padding term shows
    items, lengths, times = random_history(N_ITEMS, width, (width, width - 3, min(width, span + 2), 7, 1)[:5])
    lengths = lengths.clamp(max=width)
    generator = torch.Generator().manual_seed(1)
    picks = [
        (row, int(t)) for row in range(len(items)) for t in torch.randperm(int(lengths[row]), generator=generator)[:6]
    ]
    with torch.no_grad():
        hidden = model(items, lengths, times)
        causal = torch.stack([hidden[row, t] for row, t in picks])
        torch.testing.assert_close(causal, prefix_vectors(model, items, lengths, picks), atol=1e-5, rtol=1e-5)
        # a read-out of a history longer than L takes its last L events
        last = model.gather_last(hidden, lengths)
        torch.testing.assert_close(model.readout(items, lengths, times), last, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", [10, 2])
def test_causal_windows_give_the_prefix_regimes_loss_and_gradient(block):
    """On the data pipeline's windows of s + L - 1 events (with L - 1 of context), the summed loss and its
    gradient equal the prefix regime's; rows whose targets all sit at t >= L - 1 skip the short-history sums;
    heights in one block of short-history sums or in three."""
    from tests.data.test_batches import make
    from tim4rec.models.base import cross_entropy_terms

    span = 6
    seq, data = make([5, 9, 17, 4, 3, 30], max_len=span)
    torch.manual_seed(0)
    model = create("caser", data.n_items, span, embedding_size=6, nv=2, nh=3, dropout_prob=0.0)
    model.SHORT_BLOCK = block
    with torch.no_grad():
        model.item_embedding.weight[0].normal_()
    sums, grads = {}, {}
    for regime, stride in (("prefix", None), ("causal", 4)):
        length = None if regime == "prefix" else stride + span - 1
        samples = seq.train_samples(regime, window_stride=stride, window_length=length)
        batch = seq.batch(samples, np.arange(len(samples)))
        if regime == "causal":
            assert batch.item_seq.shape[1] == 9 and int((batch.target > 0).sum()) == samples.n_targets
        model.zero_grad()
        total, count = cross_entropy_terms(model, batch)
        total.backward()
        sums[regime] = (total.detach(), count)
        grads[regime] = [p.grad.clone() for p in model.parameters()]
    assert sums["prefix"][1] == sums["causal"][1]
    torch.testing.assert_close(sums["causal"][0], sums["prefix"][0], rtol=1e-5, atol=1e-5)
    for causal, prefix in zip(grads["causal"], grads["prefix"]):
        torch.testing.assert_close(causal, prefix, rtol=1e-4, atol=1e-5)


def test_trains_on_windows_with_context(synthetic_inter, tmp_path):
    """train_regime causal: the trainer's windows are stride + L - 1 events long, every target once."""
    from tim4rec.config import load_config
    from tim4rec.runtime import runtime_settings
    from tim4rec.training.experiment import build_experiment
    from tim4rec.training.trainer import Trainer

    settings = {"model": "caser", "dataset": str(synthetic_inter), "epochs": 1, "threads": 1, "show_progress": False,
                "train_regime": "causal", "window_stride": 4, "embedding_size": 8, "nv": 2, "nh": 2,
                "MAX_ITEM_LIST_LENGTH": 6}  # fmt: skip
    config, notices = load_config(overrides=settings)
    with runtime_settings(threads=1, flush_denormal=config.flush_denormal) as runtime:
        trainer = Trainer(build_experiment(config, notices), tmp_path / "run", runtime=runtime)
        samples = trainer.train_samples
        assert samples.width == 4 + 6 - 1 and samples.n_targets == trainer.data.train_samples("prefix").n_targets
        results = trainer.fit()
    assert results["regime"] == "causal" and results["epochs"][0]["loss"] > 0


def test_the_convolutions_stay_float32_under_bfloat16_autocast():
    """mixed_precision bf16: the head runs in bfloat16, the convolutions' sums and transforms in float32."""
    torch.manual_seed(0)
    model = create("caser", N_ITEMS, 16, **SMALL).eval()
    items, lengths, times = random_history(N_ITEMS, 40, (40, 20, 5))
    with torch.no_grad():
        plain = model(items, lengths, times)
        plain_features = model._position_features(model._image(items, lengths))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(items, lengths, times)
            features = model._position_features(model._image(items, lengths))
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(features, plain_features, atol=1e-5, rtol=1e-5)  # float32 sums, not bfloat16 ones
    torch.testing.assert_close(mixed.float(), plain, atol=0.05, rtol=0.05)
