"""Every model runs with its parameters and inputs on one device and creates nothing elsewhere.

The models run on PyTorch's ``meta`` device (shapes without data, so no GPU is needed) under a
dispatch mode that fails any operation whose tensor arguments sit on different devices (0-d CPU
scalars excepted, as PyTorch allows them): a ``torch.arange(L)`` without ``device=`` fails here.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tests.models.test_contract import IDS, VARIANTS, batch, build
from tim4rec.data.batches import Batch


class OneDevice(TorchDispatchMode):
    """Raise when an operation mixes tensors of several devices."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {str(t.device) for t in tensors if t.dim() > 0}
        if len(devices) > 1:
            raise AssertionError(f"{func} mixes devices {sorted(devices)}")
        return func(*args, **kwargs)


def training_batch(model) -> Batch:
    items, lengths, times = batch()
    if model.causal:
        targets = torch.where(torch.arange(items.shape[1])[None] < (lengths - 1)[:, None], items.roll(-1, 1), 0)
        return Batch("causal", items, lengths, times, targets)
    return Batch("prefix", items, lengths, times, items[:, 0])


@pytest.mark.parametrize("name, extra", VARIANTS, ids=IDS)
def test_every_entry_point_stays_on_the_models_device(name, extra):
    model = build(name, extra)
    prepared = model.prepare_training_batch(training_batch(model))  # on the CPU, as the trainer does
    model.to("meta")
    on_meta = prepared.to("meta")
    with OneDevice():
        hidden = model.forward(on_meta.item_seq, on_meta.item_seq_len, on_meta.timestamps)
        scores = model.full_sort_predict(on_meta.item_seq, on_meta.item_seq_len, on_meta.timestamps)
        loss = model.calculate_loss(on_meta)
        if loss.requires_grad:  # MostPop has nothing to learn
            loss.backward()
        if model.streaming:
            state = model.init_state(len(on_meta))
            stepped, state = model.step(state, on_meta.item_seq[:, 0], on_meta.timestamps[:, 0])
            stepped, state = model.step(state, on_meta.item_seq[:, 1], on_meta.timestamps[:, 1])
            assert stepped.device.type == "meta" and all(t.device.type == "meta" for t in state.tensors.values())
    assert hidden.device.type == scores.device.type == "meta"
    assert all(p.grad is None or p.grad.device.type == "meta" for p in model.parameters())


def test_the_check_catches_a_tensor_left_on_the_cpu():
    weight = torch.zeros(5, 3, device="meta")
    with pytest.raises(AssertionError, match="mixes devices"), OneDevice():
        torch.nn.functional.embedding(torch.arange(2), weight)  # a CPU index into a meta table
