"""Negatives for the sampled softmax: ranges, frequencies and the log expected counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tim4rec.errors import ConfigError
from tim4rec.training.negatives import NegativeSampler


def test_uniform_draws_ids_1_to_v_with_log_k_over_v():
    torch.manual_seed(0)
    negatives, log_expected = NegativeSampler(5000, 7, "uniform").draw()
    assert negatives.min() == 1 and negatives.max() == 7 and negatives.shape == (5000,)
    assert torch.allclose(log_expected, torch.full((5000,), math.log(5000 / 7)))


def test_popularity_draws_follow_the_training_counts():
    counts = np.array([0, 50, 0, 30, 20])  # id 0 padding, id 2 never a training target
    torch.manual_seed(0)
    k = 100_000
    negatives, log_expected = NegativeSampler(k, 4, "popularity", counts).draw()
    frequencies = np.bincount(negatives.numpy(), minlength=5) / k
    assert frequencies[0] == 0 and frequencies[2] == 0
    assert np.allclose(frequencies[[1, 3, 4]], [0.5, 0.3, 0.2], atol=0.01)
    expected = {1: math.log(k * 0.5), 3: math.log(k * 0.3), 4: math.log(k * 0.2)}
    for item, value in zip(negatives[:50].tolist(), log_expected[:50].tolist()):
        assert value == pytest.approx(expected[item], rel=1e-6)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="negative_distribution"):
        NegativeSampler(10, 5, "zipf")
    with pytest.raises(ConfigError, match="no training targets"):
        NegativeSampler(10, 3, "popularity", np.zeros(4))
