"""TiSASRec: time intervals (paper scaling, made causal; raw seconds), bucketed attention == naive."""

import math

import pytest
import torch

from tests.models.helpers import perturbed, random_history
from tim4rec.data.batches import Batch
from tim4rec.errors import ConfigError
from tim4rec.models import create
from tim4rec.models.tisasrec import TimeAwareSelfAttention, running_min_gap, time_intervals

N_ITEMS, L = 25, 10
SMALL = {"hidden_size": 16, "n_heads": 2, "inner_size": 32, "time_span": 6}


def history(lengths=(10, 7, 1)):
    """Gaps of 100..400 s, and a same-second pair (events 1 and 2)."""
    return random_history(N_ITEMS, L, lengths, min_gap=1, max_gap=5, gap_unit=100, same_second_at=2)


# -- intervals ----------------------------------------------------------------------------------
def test_scaled_intervals_use_the_running_smallest_gap():
    t = torch.tensor([[100, 100, 130, 150, 155, 0, 0]])  # gaps 0, 30, 20, 5, then padding
    assert running_min_gap(t).tolist() == [[1, 1, 30, 20, 5, 5, 5]]
    r = time_intervals(t, time_span=6, mode="scaled")
    assert r[0, 2, :3].tolist() == [1, 1, 0]  # 30 // 30
    assert r[0, 3, :4].tolist() == [2, 2, 1, 0]  # 50 // 20, 20 // 20
    assert r[0, 4, :5].tolist() == [6, 6, 5, 1, 0]  # 55 // 5 = 11 -> clipped at 6; 25 // 5; 5 // 5
    assert r[0, 1, :2].tolist() == [0, 0]
    raw = time_intervals(t, time_span=6, mode="raw_seconds")
    assert raw[0, 4, :5].tolist() == [6, 6, 6, 5, 0]
    assert r.dtype == torch.long and r.min() >= 0 and r.max() <= 6
    with pytest.raises(ConfigError):
        time_intervals(t, 6, mode="days")


def test_interval_rows_depend_only_on_the_past():
    """Row i of r is fixed by t_0..t_i: a later, smaller gap does not rescale earlier rows."""
    _, _, times = history(lengths=(10,))
    later = times.clone()
    later[0, 6:] = later[0, 5] + torch.tensor([1, 2, 3, 900])  # a 1-second gap after position 5
    for mode in ("scaled", "raw_seconds"):
        a, b = time_intervals(times, 8, mode), time_intervals(later, 8, mode)
        for i in range(6):
            assert torch.equal(a[0, i, : i + 1], b[0, i, : i + 1])


def test_scaled_mode_is_invariant_to_the_time_unit_and_origin():
    items, lengths, times = history()
    times = torch.where(items > 0, times // 100, 0)  # gaps of 0..4 seconds
    moved = torch.where(items > 0, (times - 9_000_000) * 60 + 7, 0)  # minutes, another origin
    scores = {}
    for mode in ("scaled", "raw_seconds"):
        torch.manual_seed(0)
        model = perturbed(create("tisasrec", N_ITEMS, L, **{**SMALL, "time_span": 64}, time_interval_mode=mode))
        with torch.no_grad():
            scores[mode] = (
                model.full_sort_predict(items, lengths, times),
                model.full_sort_predict(items, lengths, moved),
            )
    torch.testing.assert_close(*scores["scaled"], rtol=1e-5, atol=1e-5)
    assert (scores["raw_seconds"][0] - scores["raw_seconds"][1]).abs().max() > 1e-3  # the check can fail


@pytest.mark.parametrize("mode, unit", [("scaled", 3600), ("raw_seconds", 1)])
def test_timestamps_matter(mode, unit):
    model = perturbed(create("tisasrec", N_ITEMS, L, **SMALL, time_interval_mode=mode))
    items, lengths, _ = history()
    gaps = torch.tensor([0, 1, 2, 1, 1, 2, 1, 1, 1, 1]) * unit  # intervals below time_span = 6 units
    times = torch.where(items > 0, 1_000_000_000 + torch.cumsum(gaps, 0), 0)
    other = times.clone()
    other[0, 4:] += unit  # a longer gap before position 4 of the full-length row
    with torch.no_grad():
        a, b = model.full_sort_predict(items, lengths, times), model.full_sort_predict(items, lengths, other)
    assert (a[0] - b[0]).abs().max() > 1e-3
    torch.testing.assert_close(a[1:], b[1:])


# -- attention: buckets == naive (B, L, L, d) ---------------------------------------------------
def naive_attention(module: TimeAwareSelfAttention, x, intervals, pos_key, pos_value, interval_key, interval_value):
    """The formula with the (B, L, L, d) interval embeddings materialised."""
    b, l, d = x.shape
    h, dh = module.n_heads, module.head_size
    users = torch.arange(b)[:, None, None]
    rk = interval_key.expand(b, -1, -1)[users, intervals]  # (B, L, L, d): R^K[r_ij]
    rv = interval_value.expand(b, -1, -1)[users, intervals]
    q = module.query(x).view(b, l, h, dh)
    keys = (module.key(x) + pos_key)[:, None, :, :] + rk  # (B, i, j, d): k_j + P^K_j + R^K_ij
    values = (module.value(x) + pos_value)[:, None, :, :] + rv
    logits = torch.einsum("bihe,bijhe->bhij", q, keys.view(b, l, l, h, dh)) / math.sqrt(dh)
    logits = logits.masked_fill(torch.ones(l, l, dtype=torch.bool).triu(1), float("-inf"))
    weights = torch.softmax(logits, -1)
    attended = torch.einsum("bhij,bijhe->bihe", weights, values.view(b, l, l, h, dh)).reshape(b, l, d)
    return module.layer_norm(x + module.out(attended))


@pytest.mark.parametrize("per_user_tables", [False, True])
def test_bucketed_attention_equals_naive_computation(per_user_tables):
    torch.manual_seed(0)
    b, l, d, span = 3, 9, 12, 5
    module = perturbed(TimeAwareSelfAttention(d, 3, 0.0, 0.0, 1e-12).double())
    g = torch.Generator().manual_seed(2)
    tables = 1 if not per_user_tables else b
    x = torch.randn(b, l, d, generator=g, dtype=torch.float64)
    intervals = torch.randint(0, span + 1, (b, l, l), generator=g)
    inputs = [
        x,
        torch.randn(tables, l, d, generator=g, dtype=torch.float64),
        torch.randn(tables, l, d, generator=g, dtype=torch.float64),
        torch.randn(tables, span + 1, d, generator=g, dtype=torch.float64),
        torch.randn(tables, span + 1, d, generator=g, dtype=torch.float64),
    ]

    def run(fn):
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(module, leaves[0], intervals, *leaves[1:])
        module.zero_grad()
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), [leaf.grad for leaf in leaves], [p.grad.clone() for p in module.parameters()]

    ours, ours_input_grads, ours_param_grads = run(lambda m, *a: m(*a))
    naive, naive_input_grads, naive_param_grads = run(naive_attention)
    torch.testing.assert_close(ours, naive, rtol=1e-10, atol=1e-10)
    for a, e in zip(ours_input_grads + ours_param_grads, naive_input_grads + naive_param_grads):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_model_defaults_and_config_errors():
    model = create("tisasrec", N_ITEMS, 200)
    assert model.time_span == 256 and model.time_interval_mode == "scaled"
    assert model.interval_key_embedding.weight.shape == (257, 64)
    assert model.blocks[0].attention.n_heads == 4 and len(model.blocks) == 2
    with pytest.raises(ConfigError):
        create("tisasrec", N_ITEMS, L, time_interval_mode="days")
    with pytest.raises(ConfigError):
        create("tisasrec", N_ITEMS, L, hidden_size=10, n_heads=4)


def test_trains_one_step_with_dropout():
    torch.manual_seed(0)
    model = create("tisasrec", N_ITEMS, L, **SMALL).train()
    items, lengths, times = history()
    targets = torch.where(items > 0, torch.randint(1, N_ITEMS + 1, items.shape), 0)
    loss = model.calculate_loss(Batch("causal", items, lengths, times, targets))
    loss.backward()
    assert torch.isfinite(loss)
    for table in (model.interval_key_embedding, model.interval_value_embedding, model.position_key_embedding):
        assert table.weight.grad.abs().sum() > 0
