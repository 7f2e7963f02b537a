"""Mamba4Rec: fidelity to the reference layer structure, initialisation, streaming, configs."""

import math

import pytest
import torch
import torch.nn.functional as F

from tests.models.helpers import assert_streaming_matches_full, perturbed, random_history
from tim4rec.config import load_config
from tim4rec.data.batches import Batch
from tim4rec.models import create

N_ITEMS, L = 25, 12
SMALL = {"hidden_size": 16, "d_state": 6, "num_layers": 2}


def history(lengths=(12, 7, 1)):
    return random_history(N_ITEMS, L, lengths)


def build(**overrides):
    torch.manual_seed(0)
    return create("mamba4rec", N_ITEMS, L, **{**SMALL, **overrides})


# ---------------------------------------------------------------------------------------------
# A straightforward re-computation of the reference Mamba4Rec (RecBole model + mamba-ssm Mamba) in
# float64, reading the weights by name, with loops over time for the convolution and the scan.
def _layer_norm(x, sd, name, eps=1e-12):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * sd[name + ".weight"] + sd[name + ".bias"]


def _mamba_reference(h, sd, p, d_state):
    d_inner = sd[p + "out_proj.weight"].shape[1]
    dt_rank = sd[p + "dt_proj.weight"].shape[1]
    xz = h @ sd[p + "in_proj.weight"].T
    x, z = xz[..., :d_inner], xz[..., d_inner:]  # (B, L, d_inner)
    weight, bias = sd[p + "conv1d.weight"], sd[p + "conv1d.bias"]  # (d_inner, 1, K), (d_inner,)
    k = weight.shape[-1]
    conv = torch.zeros_like(x) + bias
    for t in range(x.shape[1]):
        for j in range(k):
            if t - (k - 1) + j >= 0:
                conv[:, t] += weight[:, 0, j] * x[:, t - (k - 1) + j]
    x = F.silu(conv)
    x_dbl = x @ sd[p + "x_proj.weight"].T
    dt, B, C = x_dbl[..., :dt_rank], x_dbl[..., dt_rank : dt_rank + d_state], x_dbl[..., dt_rank + d_state :]
    delta = F.softplus(dt @ sd[p + "dt_proj.weight"].T + sd[p + "dt_proj.bias"])  # (B, L, d_inner)
    A = -torch.exp(sd[p + "A_log"])  # (d_inner, N)
    state = torch.zeros(x.shape[0], d_inner, d_state, dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        state = torch.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((state * C[:, t, None, :]).sum(-1) + sd[p + "D"] * x[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ sd[p + "out_proj.weight"].T


def reference_hidden(sd, item_seq, *, num_layers, d_state):
    sd = {k: v.double() for k, v in sd.items()}
    h = _layer_norm(sd["item_embedding.weight"][item_seq], sd, "layer_norm")  # dropout (identity) first
    for i in range(num_layers):
        p = f"mamba_layers.{i}."
        out = _mamba_reference(h, sd, p + "mamba.", d_state)
        h = _layer_norm(out + h if num_layers > 1 else out, sd, p + "layer_norm")
        inner = F.gelu(h @ sd[p + "ffn.fc1.weight"].T + sd[p + "ffn.fc1.bias"])
        h = _layer_norm(inner @ sd[p + "ffn.fc2.weight"].T + sd[p + "ffn.fc2.bias"] + h, sd, p + "ffn.layer_norm")
    return h


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_forward_matches_reference_recomputation(num_layers):
    model = perturbed(build(num_layers=num_layers))
    items, lengths, times = history()
    with torch.no_grad():
        hidden = model(items, lengths, times)
    expected = reference_hidden(model.state_dict(), items, num_layers=num_layers, d_state=SMALL["d_state"])
    torch.testing.assert_close(hidden.double(), expected, atol=1e-5, rtol=1e-4)


def test_embedding_dropout_comes_before_the_layer_norm():
    model = build()
    order = []
    for name in ("item_embedding", "dropout", "layer_norm"):
        getattr(model, name).register_forward_hook(lambda module, args, out, name=name: order.append(name))
    model(*history())
    assert order == ["item_embedding", "dropout", "layer_norm"]


def test_layer_structure_and_parameter_count_of_the_mamba_block():
    model = create("mamba4rec", N_ITEMS, L)  # the defaults: d 64, 2 layers, N 32, K 4, expand 2
    assert model.hyperparameters == {
        "hidden_size": 64,
        "num_layers": 2,
        "dropout_prob": 0.2,
        "d_state": 32,
        "d_conv": 4,
        "expand": 2,
    }
    assert model.regime == "causal" and model.causal
    block = model.mamba_layers[0].mamba
    assert block.d_inner == 128 and block.dt_rank == 4
    assert block.in_proj.bias is None and block.x_proj.bias is None and block.out_proj.bias is None
    assert block.dt_proj.bias is not None and block.conv1d.bias is not None and block.conv1d.groups == 128
    # mamba-ssm's Mamba(d_model=64, d_state=32, d_conv=4, expand=2) has 38,784 parameters
    assert (
        sum(p.numel() for p in block.parameters())
        == 64 * 256 + (128 * 4 + 128) + 128 * 68 + (4 * 128 + 128) + 128 * 32 + 128 + 128 * 64
        == 38_784
    )
    assert model.mamba_layers[0].ffn.fc1.out_features == 256


def test_initialisation_follows_the_reference():
    torch.manual_seed(0)
    model = create("mamba4rec", N_ITEMS, L)
    block = model.mamba_layers[0].mamba
    torch.testing.assert_close(block.A_log, torch.log(torch.arange(1.0, 33.0)).repeat(128, 1))
    torch.testing.assert_close(block.A(), -torch.arange(1.0, 33.0).repeat(128, 1))
    assert torch.equal(block.D, torch.ones(128))
    assert torch.equal(block.dt_proj.bias, torch.zeros(128))  # zeroed by the reference's _init_weights
    for linear in (block.in_proj, block.x_proj, block.dt_proj, block.out_proj, model.mamba_layers[1].ffn.fc1):
        assert abs(linear.weight.std().item() - 0.02) < 0.004, linear
    assert abs(model.item_embedding.weight.std().item() - 0.02) < 0.004
    assert torch.equal(model.layer_norm.weight, torch.ones(64)) and torch.equal(model.layer_norm.bias, torch.zeros(64))
    # the convolution keeps PyTorch's default (kaiming-uniform, bound 1/sqrt(K) for a depthwise conv)
    assert block.conv1d.weight.abs().max() <= 0.5 and block.conv1d.weight.std() > 0.1


@pytest.mark.parametrize("num_layers", [1])  # the default 2 layers: test_contract.py
def test_streaming_matches_full_sort_predict(num_layers):
    model = perturbed(build(num_layers=num_layers))
    items, lengths, times = history()
    # compared on the rows whose history reaches each position
    streamed = assert_streaming_matches_full(model, items, times, atol=1e-4, lengths=lengths)
    assert len(streamed) == L and all(scores.shape == (len(items), N_ITEMS + 1) for scores in streamed)


def test_causal_window_hidden_equals_prefix_hidden():
    model = perturbed(build())
    items, lengths, times = history(lengths=(12,))
    with torch.no_grad():
        whole = model(items, lengths, times)
        for t in (0, 4, 11):
            prefix = model(items[:, : t + 1], torch.tensor([t + 1]), times[:, : t + 1])
            torch.testing.assert_close(prefix[:, -1], whole[:, t], atol=1e-5, rtol=1e-5)


def test_trains_one_step():
    model = build()
    items, lengths, times = history()
    targets = torch.where(items > 0, items.roll(-1, dims=1), 0)
    targets[:, -1] = 0
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = Batch("causal", items, lengths, times, targets)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert math.isfinite(losses[0]) and losses[-1] < losses[0]
    assert model.mamba_layers[0].mamba.A_log.grad.abs().sum() > 0
    assert model.mamba_layers[0].mamba.dt_proj.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("dataset, length, batch", [("ml-100k", 50, 256), ("ml-1m", 200, 2048)])
def test_packaged_configs(dataset, length, batch):
    config, _ = load_config(model="mamba4rec", dataset=dataset)
    assert config.MAX_ITEM_LIST_LENGTH == length and config.train_batch_size == batch
    assert (
        config.hyperparameters["num_layers"],
        config.hyperparameters["d_state"],
        config.hyperparameters["d_conv"],
        config.hyperparameters["expand"],
        config.hyperparameters["dropout_prob"],
    ) == (
        2,
        32,
        4,
        2,
        0.2,
    )
    assert (
        config.hyperparameters["hidden_size"] == 64
        and config.learning_rate == 0.001
        and config.valid_metric == "NDCG@10"
    )


def test_reference_style_yaml_loads(tmp_path):
    """A config written with the keys of the reference repository's config.yaml is accepted."""
    (tmp_path / "ref.yaml").write_text(
        "gpu_id: '0'\nlog_wandb: False\nhidden_size: 64\nnum_layers: 1\ndropout_prob: 0.2\nloss_type: 'CE'\n"
        "d_state: 32\nd_conv: 4\nexpand: 2\ndataset: ml-1m\nMAX_ITEM_LIST_LENGTH: 200\nepochs: 300\n"
        "train_batch_size: 2048\nlearner: adam\nlearning_rate: 0.001\nstopping_step: 10\ntrain_neg_sample_args: ~\n"
        "metrics: ['Hit', 'NDCG', 'MRR']\nvalid_metric: NDCG@10\nweight_decay: 0.0\ntopk: [10]\n"
    )
    config, _ = load_config(model="mamba4rec", config_files=[tmp_path / "ref.yaml"])
    assert config.hyperparameters["num_layers"] == 1 and config.topk == [10]
