"""Every registered model honours the contract of tim4rec.models.base."""

import pytest
import torch

from tests.models.helpers import assert_streaming_matches_full, perturbed, random_history
from tim4rec.data.batches import Batch
from tim4rec.models import available, create, model_defaults
from tim4rec.models.base import StreamState

N_ITEMS, L = 30, 12


#: (model name, extra hyper-parameters): every model, and every mode of models that have several
VARIANTS = [(name, {}) for name in available()] + [("tim4rec", {"time_mode": mode}) for mode in ("paper", "none")]
IDS = [name + "".join(f"-{v}" for v in extra.values()) for name, extra in VARIANTS]


def build(name: str, extra: dict):
    defaults = model_defaults(name)
    sizes = {"hidden_size": 16, "inner_size": 32, "n_heads": 2, "head_dim": 8, "d_state": 8, "chunk_size": 4}
    torch.manual_seed(0)
    return create(name, N_ITEMS, L, **{k: v for k, v in sizes.items() if k in defaults}, **extra)


def batch(b: int = 4):
    return random_history(N_ITEMS, L, (L, 5, 1, 9)[:b], min_gap=1, max_gap=10_000)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_scores_shape_and_gradient(name, extra):
    model = build(name, extra)
    items, lengths, times = batch()
    scores = model.full_sort_predict(items, lengths, times)
    assert scores.shape == (4, N_ITEMS + 1)
    if not list(model.parameters()):  # MostPop: counts, nothing to learn
        return
    scores.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.regime in ("prefix", "causal")


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_padding_content_does_not_change_scores(name, extra):
    """Property of causal models: what is written after position len does not matter."""
    model = build(name, extra).eval()
    if not model.causal:
        pytest.skip("not a causal model")
    items, lengths, times = batch()
    padding = torch.arange(L)[None] >= lengths[:, None]
    noisy_items = torch.where(padding, torch.randint(1, N_ITEMS + 1, items.shape), items)
    noisy_times = torch.where(padding, times.max() + 12345, times)
    with torch.no_grad():
        clean = model.full_sort_predict(items, lengths, times)
        noisy = model.full_sort_predict(noisy_items, lengths, noisy_times)
    torch.testing.assert_close(clean, noisy, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_causal_loss_equals_prefix_loss_on_the_same_targets(name, extra):
    """For a causal model, position t of a window sees exactly the prefix ending at t."""
    model = build(name, extra).eval()
    if not model.causal:
        pytest.skip("not a causal model")
    items, lengths, times = batch(b=1)
    n = int(lengths[0])
    targets = torch.zeros_like(items)
    targets[0, : n - 1] = items[0, 1:n]
    with torch.no_grad():
        causal = model.calculate_loss(Batch("causal", items, lengths, times, targets))
        prefix_items = torch.zeros(n - 1, L, dtype=torch.long)
        prefix_times = torch.zeros(n - 1, L, dtype=torch.long)
        for t in range(1, n):
            prefix_items[t - 1, :t] = items[0, :t]
            prefix_times[t - 1, :t] = times[0, :t]
        prefix = model.calculate_loss(Batch("prefix", prefix_items, torch.arange(1, n), prefix_times, items[0, 1:n]))
    torch.testing.assert_close(causal, prefix, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_streaming_equals_full_forward(name, extra):
    """A causal model that streams gives, after each event fed with step, the scores of the full
    forward on the prefix; with perturbed weights, padded rows and same-second events."""
    model = perturbed(build(name, extra))
    if not model.streaming:
        pytest.skip("not a streaming causal model")
    items, _, times = random_history(N_ITEMS, L, (L, 9, 5, 1), same_second_at=3)
    streamed = assert_streaming_matches_full(model, items, times, atol=1e-4)
    assert len(streamed) == L and all(scores.shape == (4, N_ITEMS + 1) for scores in streamed)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_readout_is_the_forward_state_at_len_minus_one(name, extra):
    """Models may compute the read-out row alone (SASRec does); it must equal the full forward's."""
    model = build(name, extra).eval()
    items, lengths, times = batch()
    with torch.no_grad():
        full = model.gather_last(model.forward(items, lengths, times), lengths)
        torch.testing.assert_close(model.readout(items, lengths, times), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_streaming_states_of_some_users_step_alone(name, extra):
    """A server steps the users of a request together: gathering their rows of a state, stepping
    them and scattering them back gives what stepping every user at once gives."""
    model = perturbed(build(name, extra))
    if not model.streaming:
        pytest.skip("not a streaming model")
    items, _, times = random_history(N_ITEMS, L, (L, L, L, L), seed=3)
    together = model.init_state(4)
    apart = model.init_state(4)
    with torch.no_grad():
        for t in range(5):
            expected, together = model.step(together, items[:, t], times[:, t])
            for rows in ([2, 0], [3, 1]):
                scores, part = model.step(apart.gather(rows), items[rows, t], times[rows, t])
                apart = apart.scatter(rows, part)
                torch.testing.assert_close(scores, expected[rows], atol=1e-5, rtol=1e-5)
    for key in together.tensors:
        torch.testing.assert_close(apart[key], together[key], atol=1e-5, rtol=1e-5)
    assert len(StreamState.concat([apart.gather([0]), apart.gather([1, 2])])) == 3
