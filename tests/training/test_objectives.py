"""Training options for large catalogues and accelerators: the sampled softmax and mixed precision."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tim4rec
from tests.conftest import write_inter
from tim4rec.config import load_config
from tim4rec.errors import ConfigError
from tim4rec.runtime import runtime_settings
from tim4rec.training.experiment import build_experiment
from tim4rec.training.trainer import Trainer

SMALL = {
    "model": "tim4rec", "hidden_size": 16, "head_dim": 8, "d_state": 8, "chunk_size": 4, "MAX_ITEM_LIST_LENGTH": 12,
    "dropout_prob": 0.0, "time_drop_out": 0.0, "train_batch_size": 48, "threads": 1, "seed": 3,
    "show_progress": False, "learning_rate": 0.01,
}  # fmt: skip


def learns(losses: list[float]) -> bool:
    return sum(losses[-5:]) < sum(losses[:5])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Learnable sequences: every user walks the 30 items in order from a random start."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(60):
        start = int(rng.integers(0, 30))
        rows += [(f"u{user}", f"i{(start + t) % 30}", 1, 1_000_000 + 3600 * t) for t in range(15)]
    return write_inter(tmp_path_factory.mktemp("objectives") / "data.inter", rows)


def step_losses(data: Path, folder: Path, steps: int = 6, **settings) -> list[float]:
    config, _ = load_config(overrides={**SMALL, "dataset": str(data), **settings})
    with runtime_settings(threads=1) as runtime:
        trainer = Trainer(build_experiment(config), folder, runtime=runtime)
        batches = itertools.chain.from_iterable(
            trainer.data.iterate(trainer.train_samples, trainer.experiment.rows_per_batch,
                                 generator=torch.Generator().manual_seed(epoch))
            for epoch in itertools.count()
        )  # fmt: skip
        return [trainer._step(batch) for batch in itertools.islice(batches, steps)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_float32(data: Path, tmp_path: Path, precision: str):
    exact = step_losses(data, tmp_path / "fp32")
    mixed = step_losses(data, tmp_path / precision, mixed_precision=precision)
    assert all(torch.isfinite(torch.tensor(mixed))) and mixed != exact  # autocast took effect
    for a, b in zip(exact, mixed):
        assert abs(a - b) <= 0.03 * abs(a), (exact, mixed)
    assert learns(step_losses(data, tmp_path / f"{precision}-long", steps=30, mixed_precision=precision))


def test_fp16_keeps_its_loss_scale_in_the_checkpoint_and_resumes(data: Path, tmp_path: Path):
    settings = {**SMALL, "dataset": str(data), "mixed_precision": "fp16", "epochs": 1}
    tim4rec.train(settings, output_dir=tmp_path / "run")
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["scaler_state"]["scale"] > 0
    results = tim4rec.train({**settings, "epochs": 2}, output_dir=tmp_path / "run", resume=True)
    assert results["status"] == "finished" and len(results["epochs"]) == 2


def test_the_sampled_softmax_trains_and_is_evaluated_over_all_items(data: Path, tmp_path: Path):
    for distribution in ("uniform", "popularity"):
        losses = step_losses(
            data, tmp_path / distribution, steps=30, sampled_negatives=16, negative_distribution=distribution
        )
        assert learns(losses), losses
    results = tim4rec.train(
        {**SMALL, "dataset": str(data), "sampled_negatives": 16, "epochs": 2}, output_dir=tmp_path / "run"
    )
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["config"]["sampled_negatives"] == 16 and results["evaluated_users"] == 60
    assert 0 <= results["test"]["ndcg@10"] <= 1


def test_the_sampled_softmax_with_every_item_drawn_once_matches_the_full_loss(data: Path, tmp_path: Path, monkeypatch):
    """A sampler that returns every id once (log expected count 0) gives the full-softmax step."""
    from tim4rec.training import negatives

    def every_id(self, device="cpu"):
        ids = torch.arange(self.n_items + 1)
        return ids.to(device), torch.zeros(len(ids), device=device)

    full = step_losses(data, tmp_path / "full", fused_cross_entropy=False)
    monkeypatch.setattr(negatives.NegativeSampler, "draw", every_id)
    sampled = step_losses(data, tmp_path / "sampled", sampled_negatives=1, negative_distribution="uniform")
    assert sampled == pytest.approx(full, rel=1e-5)


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"sampled_negatives": 0}, "sampled_negatives"),
        ({"negative_distribution": "zipf"}, "negative_distribution"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"kernels": "triton"}, "kernels"),
    ],
)
def test_bad_settings_are_named(setting: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides={**SMALL, "dataset": "ml-100k", **setting})


def test_an_unquoted_off_means_float32():
    """YAML reads ``--set mixed_precision=off`` as false; it means off, and true stays an error."""
    config, _ = load_config(overrides={**SMALL, "dataset": "ml-100k"}, set_args=["mixed_precision=off"])
    assert config.mixed_precision == "off"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(overrides={**SMALL, "dataset": "ml-100k"}, set_args=["mixed_precision=on"])
