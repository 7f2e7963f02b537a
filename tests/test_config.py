from pathlib import Path

import pytest

from tim4rec.config import load_config
from tim4rec.errors import ConfigError


def test_layers_and_overrides(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("model: sasrec\nlearning_rate: 0.01\nn_heads: 4\ngpu_id: '0'\n")
    config, notices = load_config(
        config_files=[tmp_path / "a.yaml"], set_args=["learning_rate=5e-4", "topk=[5,10]", "valid_metric=NDCG@5"]
    )
    assert config.learning_rate == 5e-4 and config.hyperparameters["n_heads"] == 4 and config.topk == [5, 10]
    assert "gpu_id" not in config.to_dict() and any("gpu_id" in notice for notice in notices)


def test_unknown_key_is_named(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("model: sasrec\nlearnin_rate: 0.01\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learnin_rate' \(from .*a\.yaml\)"):
        load_config(config_files=[tmp_path / "a.yaml"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "nosuchmodel"}, "unknown model 'nosuchmodel'"),
        ({"model": "sasrec", "loss_type": "BPR"}, "loss_type"),
        ({"model": "sasrec", "train_neg_sample_args": {"distribution": "uniform"}}, "train_neg_sample_args"),
        ({"model": "sasrec", "epochs": 0}, "epochs"),
        ({"model": "sasrec", "metrics": ["Recall"]}, "unsupported metric"),
        ({"model": "sasrec", "valid_metric": "NDCG@7"}, "valid_metric"),
        ({"model": "sasrec", "flush_denormal": "yes"}, "flush_denormal: expected true or false"),
        ({}, "no model given"),
    ],
)
def test_bad_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_bad_yaml_names_line(tmp_path: Path):
    (tmp_path / "b.yaml").write_text("model: sasrec\nepochs: [1,\n")
    with pytest.raises(ConfigError, match=r"b\.yaml, line \d+: invalid YAML"):
        load_config(config_files=[tmp_path / "b.yaml"])
