"""Micro-batches: the gradients of a batch split into pieces equal those of the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tim4rec.config import load_config
from tim4rec.data.batches import Batch
from tim4rec.runtime import runtime_settings
from tim4rec.training.experiment import build_experiment
from tim4rec.training.trainer import Trainer

NO_DROPOUT = {"dropout_prob": 0.0, "time_drop_out": 0.0, "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0}


def gradients_after_one_step(dataset: Path, tmp_path: Path, micro_batch: int, **settings) -> list[torch.Tensor]:
    config, _ = load_config(overrides={"dataset": str(dataset), "threads": 1, "micro_batch": micro_batch, **settings})
    with runtime_settings(threads=1):
        experiment = build_experiment(config)
        trainer = Trainer(experiment, tmp_path / f"run{micro_batch}", runtime=None)  # the loop is not run
        samples = trainer.train_samples
        torch.manual_seed(5)  # the same cloze masks for BERT4Rec
        trainer._step(trainer.data.batch(samples, torch.arange(min(len(samples), 24))))
    return [p.grad.clone() for p in experiment.model.parameters() if p.grad is not None]


@pytest.mark.parametrize(
    "model, settings",
    [
        ("tim4rec", {"time_mode": "paper", "hidden_size": 16, "head_dim": 8, "d_state": 8, "chunk_size": 4}),
        ("tim4rec", {"hidden_size": 16, "head_dim": 8, "d_state": 8, "chunk_size": 4, "train_regime": "prefix"}),
        ("sasrec", {"hidden_size": 16, "n_heads": 2, "inner_size": 32, "train_regime": "causal"}),
        ("bert4rec", {"hidden_size": 16, "n_heads": 2, "inner_size": 32, "mask_ratio": 0.5, "ft_ratio": 0.0}),
    ],
    ids=["tim4rec-paper-prefix", "tim4rec-causal-model-prefix", "sasrec-causal", "bert4rec-cloze"],
)
def test_split_gradients_equal_the_whole_batch(model, settings, synthetic_inter: Path, tmp_path: Path):
    no_dropout = {key: value for key, value in NO_DROPOUT.items() if _takes(model, key)}
    extra = {"model": model, "MAX_ITEM_LIST_LENGTH": 8, "train_batch_size": 24, **settings, **no_dropout}
    whole = gradients_after_one_step(synthetic_inter, tmp_path, 1000, **extra)
    split = gradients_after_one_step(synthetic_inter, tmp_path, 5, **extra)
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def _takes(model: str, key: str) -> bool:
    from tim4rec.models import model_defaults

    return key in model_defaults(model)


def test_rows_rebase_target_positions():
    items = torch.arange(1, 13).view(3, 4)
    target = torch.tensor([[2, 3, 0, 0], [6, 7, 8, 0], [10, 0, 0, 0]])
    batch = Batch("causal", items, torch.tensor([3, 4, 2]), items * 10, target)
    pieces = batch.split(2)
    assert [len(p) for p in pieces] == [2, 1]
    assert pieces[0].target_index.tolist() == [0, 1, 4, 5, 6] and pieces[1].target_index.tolist() == [0]
    assert sum(p.n_targets for p in pieces) == batch.n_targets == 6
