"""Assemble an experiment from a config: data, model (seeded), loss, optimiser, device.

``build_experiment(config)`` is the one place where a config becomes objects; the loop
(:class:`tim4rec.training.trainer.Trainer`) receives them and owns only epochs, validation,
stopping, checkpoints and logging.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from tim4rec.config import Config
from tim4rec.data import SequenceData
from tim4rec.data.batches import PREFIX, Regime
from tim4rec.errors import ConfigError
from tim4rec.models import create
from tim4rec.models.base import SequentialRecommender
from tim4rec.runtime import resolve_device
from tim4rec.training.distributed import SINGLE, Distributed
from tim4rec.training.loss import NextItemLoss
from tim4rec.training.negatives import NegativeSampler
from tim4rec.training.optimizer import adam


@dataclass
class Experiment:
    """What one training run works on."""

    config: Config
    data: SequenceData
    model: SequentialRecommender
    loss: NextItemLoss
    optimizer: torch.optim.Optimizer | None  # None: nothing to learn (MostPop)
    regime: str
    device: torch.device
    notices: list[str] = field(default_factory=list)
    distributed: Distributed = SINGLE

    @property
    def rows_per_batch(self) -> int:
        return rows_per_batch(self.config, self.regime)


def rows_per_batch(config: Config, regime: Regime) -> int:
    """Rows of a training batch: ``train_batch_size`` counts training targets (:meth:`Regime.rows_per_batch`)."""
    return regime.rows_per_batch(config.train_batch_size, config.window_stride or config.max_seq_length)


def causal_window_length(config: Config, model: SequentialRecommender, regime: Regime) -> int | None:
    """The length of a causal training window: ``stride + span - 1`` for a model whose positions read a span
    of events (:attr:`SequentialRecommender.history_span`), None (L) otherwise."""
    span = model.history_span
    if regime is PREFIX or span is None:
        return None
    return (config.window_stride or config.max_seq_length) + span - 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_experiment(config: Config, notices: list[str] | None = None, distributed: Distributed = SINGLE) -> Experiment:
    """Load and split the data, then build the model from ``config.seed``, its loss and Adam.

    Under torchrun, rank 0 loads (and fetches) the data first; every rank builds the same model
    from the same seed, and the loss module is wrapped in DistributedDataParallel.
    """
    device = resolve_device(config.device)
    if distributed.active and device.type == "cuda":
        device = torch.device("cuda", distributed.local_rank)
    with distributed.main_first():
        data = config.data.load()
    data.check_trainable()
    seed_everything(config.seed)
    model = create(config.model, data.interactions.n_items, config.max_seq_length, **config.hyperparameters)
    regime = config.train_regime or model.regime
    if regime is not PREFIX and not (model.causal or model.window_objective):
        raise ConfigError(
            f"train_regime: model '{config.model}' (as configured) is not causal, "
            "so it trains only in the prefix regime"
        )
    model.fit_data(data)
    model.to(device)
    parameters = list(model.parameters())
    optimizer = adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay) if parameters else None
    sampler = None
    if config.sampled_negatives:
        counts = data.train_target_counts() if config.negative_distribution == "popularity" else None
        n_items = data.interactions.n_items
        sampler = NegativeSampler(config.sampled_negatives, n_items, config.negative_distribution, counts)
    loss = NextItemLoss(
        model, fused=config.fused_cross_entropy, sampler=sampler, mixed_precision=config.mixed_precision
    )
    if distributed.active and parameters:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: some weights take no part in some losses (the last TiM4Rec layer's next-tau
        # gate, a read-out step's unused rows), and DDP must not wait for their gradients
        loss = DistributedDataParallel(
            loss, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    return Experiment(config, data, model, loss, optimizer, regime, device, list(notices or []), distributed)
