"""LRURec: the equations of the authors' code, ring initialisation, streaming."""

import pytest
import torch
import torch.nn.functional as F

from tests.models.helpers import assert_streaming_matches_full, perturbed, random_history
from tim4rec.data.batches import Batch
from tim4rec.errors import ConfigError
from tim4rec.models import create

N_ITEMS, L = 25, 12
SMALL = {"hidden_size": 8, "n_layers": 2}


#: the ring-initialised lambda / gamma parameters, kept when the other weights are perturbed
LAMBDAS = ("nu_log", "theta_log", "gamma_log")


def history(lengths=(12, 7, 1)):
    return random_history(N_ITEMS, L, lengths)


def reference_hidden(sd, item_seq, n_layers, eps):
    """The authors' equations with complex weights, a loop over time, in complex128 / float64."""
    sd = {k: v.double() for k, v in sd.items()}
    x = F.layer_norm(
        sd["item_embedding.weight"][item_seq],
        sd["layer_norm.weight"].shape,
        sd["layer_norm.weight"],
        sd["layer_norm.bias"],
        eps,
    )
    for i in range(n_layers):
        p = f"blocks.{i}."
        nu, theta, gamma = (torch.exp(sd[p + "lru." + key]) for key in ("nu_log", "theta_log", "gamma_log"))
        lam = torch.exp(torch.complex(-nu, theta))
        n = lam.shape[0]
        w_in, b_in = sd[p + "lru.in_proj.weight"], sd[p + "lru.in_proj.bias"]
        B = torch.complex(w_in[:n], w_in[n:])  # (N, d) complex
        b = torch.complex(b_in[:n], b_in[n:])
        w_out = sd[p + "lru.out_proj.weight"]  # (d, 2N): Re(C s) = C_re s_re - C_im s_im
        C = torch.complex(w_out[:, :n], -w_out[:, n:])
        c = sd[p + "lru.out_proj.bias"]
        state = torch.zeros(x.shape[0], n, dtype=torch.complex128)
        outs = []
        for t in range(x.shape[1]):
            state = lam * state + gamma * (x[:, t].to(torch.complex128) @ B.T + b)
            outs.append((state @ C.T).real + c)
        y = F.layer_norm(
            x + torch.stack(outs, 1), x.shape[-1:], sd[p + "lru.layer_norm.weight"], sd[p + "lru.layer_norm.bias"], eps
        )
        inner = F.gelu(y @ sd[p + "feed_forward.fc1.weight"].T + sd[p + "feed_forward.fc1.bias"])
        out = inner @ sd[p + "feed_forward.fc2.weight"].T + sd[p + "feed_forward.fc2.bias"]
        x = F.layer_norm(
            y + out, y.shape[-1:], sd[p + "feed_forward.layer_norm.weight"], sd[p + "feed_forward.layer_norm.bias"], eps
        )
    return x


def test_matches_the_equations_of_the_authors_code():
    torch.manual_seed(0)
    model = perturbed(create("lrurec", N_ITEMS, L, **SMALL).double(), keep=LAMBDAS)
    items, lengths, times = history()
    with torch.no_grad():
        ours = model(items, lengths, times)
        scores = model.full_sort_predict(items, lengths, times)
    expected = reference_hidden(model.state_dict(), items, 2, 1e-5)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    read = expected[torch.arange(3), lengths - 1]
    torch.testing.assert_close(scores, read @ model.item_embedding.weight.T + model.item_bias, rtol=1e-9, atol=1e-9)


def test_float32_model_matches_float64():
    torch.manual_seed(0)
    model = perturbed(create("lrurec", N_ITEMS, 50, **SMALL), keep=LAMBDAS)
    items = torch.randint(1, N_ITEMS + 1, (2, 50))
    lengths, times = torch.tensor([50, 31]), torch.zeros(2, 50, dtype=torch.long)
    with torch.no_grad():
        single = model.full_sort_predict(items, lengths, times)
        double = model.double().full_sort_predict(items, lengths, times)
    torch.testing.assert_close(single.double(), double, rtol=1e-4, atol=1e-4)


def test_ring_initialisation_and_truncated_normal_weights():
    torch.manual_seed(0)
    model = create("lrurec", N_ITEMS, L, hidden_size=16, r_min=0.5, r_max=0.9)
    for block in model.blocks:
        lam = block.lru.lambdas(torch.float64)
        assert lam.shape == (32,)
        assert lam.abs().min() >= 0.5 - 1e-6 and lam.abs().max() <= 0.9 + 1e-6
        torch.testing.assert_close(
            torch.exp(block.lru.gamma_log).double(), torch.sqrt(1 - lam.abs() ** 2), rtol=1e-5, atol=1e-6
        )
        assert block.lru.in_proj.bias.abs().max() <= 0.04 and block.lru.in_proj.bias.abs().max() > 0
    assert model.item_embedding.weight.abs().max() <= 0.04
    assert torch.equal(model.layer_norm.weight, torch.ones(16))
    with pytest.raises(ConfigError):
        create("lrurec", N_ITEMS, L, r_min=0.9, r_max=0.5)


def test_streaming_equals_full_sort_predict():
    torch.manual_seed(0)
    model = perturbed(create("lrurec", N_ITEMS, L, **SMALL), keep=LAMBDAS)
    items, lengths, times = history(lengths=(12, 9, 5))
    assert_streaming_matches_full(model, items, times, atol=1e-4)


def test_trains_one_step():
    torch.manual_seed(0)
    model = create("lrurec", N_ITEMS, L, **SMALL).train()
    items, lengths, times = history()
    targets = torch.where(items > 0, torch.randint(1, N_ITEMS + 1, items.shape), 0)
    loss = model.calculate_loss(Batch("causal", items, lengths, times, targets))
    loss.backward()
    for name in LAMBDAS:
        assert model.blocks[0].lru.get_parameter(name).grad.abs().sum() > 0
    assert model.item_bias.grad.abs().sum() > 0
