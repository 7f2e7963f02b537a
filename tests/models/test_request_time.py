"""The request time (the time the prediction is for) in the read-out of the models that take it."""

import pytest
import torch

from tests.models.helpers import perturbed, random_history
from tim4rec.data.batches import Batch
from tim4rec.models import create

N_ITEMS, L = 30, 12
SMALL = {
    "tim4rec": {"hidden_size": 16, "head_dim": 8, "d_state": 8, "chunk_size": 4},
    "tisasrec": {"hidden_size": 16, "n_heads": 2, "inner_size": 32},
}
MODELS = list(SMALL)


def request_model(name: str, read: bool):
    torch.manual_seed(0)
    model = create(name, N_ITEMS, L, **SMALL[name], request_time=read)
    return perturbed(model).eval()  # the request path's output layer away from its zero start


@pytest.mark.parametrize("name", MODELS)
def test_the_request_gap_changes_the_scores_only_of_a_model_that_reads_it(name):
    items, lengths, times = random_history(N_ITEMS, L, (12, 5, 1), min_gap=1, max_gap=10_000)
    last = times.gather(1, (lengths - 1)[:, None]).squeeze(1)
    with torch.no_grad():
        for read in (True, False):
            model = request_model(name, read)
            soon, later = (model.full_sort_predict(items, lengths, times, last + gap) for gap in (300, 30 * 86_400))
            assert (not torch.allclose(soon, later)) is read
            at_last = model.full_sort_predict(items, lengths, times, last)
            assert torch.equal(model.full_sort_predict(items, lengths, times), at_last)  # no request time: gap 0


@pytest.mark.parametrize("name", MODELS)
def test_streaming_then_the_request_time_equals_the_full_forward_at_that_time(name):
    model = request_model(name, True)
    items, lengths, times = random_history(N_ITEMS, L, (12,), min_gap=1, max_gap=10_000)
    request = times[:, 11] + 4 * 3600
    with torch.no_grad():
        state, hidden = model.init_state(1), None
        for t in range(12):
            hidden, state = model.step_hidden(state, items[:, t], times[:, t])
        streamed = model.at_request(hidden, request - times[:, 11])
        torch.testing.assert_close(streamed, model.predict_hidden(items, lengths, times, request), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_causal_loss_reads_each_targets_time_as_the_prefix_loss_does(name):
    """Causal windows: each position's prediction is for its target's time, as a prefix sample's is."""
    model = request_model(name, True)
    items, lengths, times = random_history(N_ITEMS, L, (12,), min_gap=1, max_gap=10_000)
    n = 12
    targets, target_times = torch.zeros_like(items), torch.zeros_like(times)
    targets[0, : n - 1], target_times[0, : n - 1] = items[0, 1:n], times[0, 1:n]
    with torch.no_grad():
        causal = model.calculate_loss(Batch("causal", items, lengths, times, targets, target_time=target_times))
        prefix_items, prefix_times = torch.zeros(n - 1, L, dtype=torch.long), torch.zeros(n - 1, L, dtype=torch.long)
        for t in range(1, n):
            prefix_items[t - 1, :t], prefix_times[t - 1, :t] = items[0, :t], times[0, :t]
        prefix = model.calculate_loss(
            Batch("prefix", prefix_items, torch.arange(1, n), prefix_times, items[0, 1:n], target_time=times[0, 1:n])
        )
    torch.testing.assert_close(causal, prefix, atol=1e-5, rtol=1e-5)
