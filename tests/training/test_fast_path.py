"""The fast path (fused loss, read-out-only last layer, reused memory, compiled kernels) trains like
the plain eager path: per-step losses within 1e-4 relative for 50 steps, dropout off, fixed seed."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from tests.conftest import synthetic_rows, write_inter
from tim4rec.config import load_config
from tim4rec.runtime import runtime_settings
from tim4rec.training.experiment import build_experiment
from tim4rec.training.trainer import Trainer

SMALL = {
    "model": "tim4rec", "hidden_size": 16, "head_dim": 8, "d_state": 8, "chunk_size": 4, "MAX_ITEM_LIST_LENGTH": 12,
    "dropout_prob": 0.0, "time_drop_out": 0.0, "train_batch_size": 48, "threads": 1, "seed": 3,
}  # fmt: skip


def step_losses(dataset: Path, tmp_path: Path, *, fast: bool, regime: str, steps: int = 50) -> list[float]:
    settings = {**SMALL, "dataset": str(dataset), "train_regime": regime, "fused_cross_entropy": fast}
    config, _ = load_config(overrides=settings)
    with runtime_settings(threads=1, reuse_memory=fast, compile=fast) as runtime:
        experiment = build_experiment(config)
        trainer = Trainer(experiment, tmp_path / f"{regime}-{fast}", runtime=runtime)
        losses = []
        for epoch in itertools.count(1):
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
            for batch in trainer.data.iterate(trainer.train_samples, experiment.rows_per_batch, generator=generator):
                losses.append(trainer._step(batch))
                if len(losses) == steps:
                    return losses


def test_fast_path_losses_match_the_eager_path(tmp_path: Path):
    data = write_inter(tmp_path / "data.inter", synthetic_rows(n_users=40, per_user=15))
    for regime in ("causal", "prefix"):  # prefix: the read-out path carries the loss
        fast = step_losses(data, tmp_path, fast=True, regime=regime)
        plain = step_losses(data, tmp_path, fast=False, regime=regime)
        torch.testing.assert_close(torch.tensor(fast), torch.tensor(plain), rtol=1e-4, atol=0)
