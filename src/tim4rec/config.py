"""Configuration: flat YAML files with RecBole's key names, merged with overrides.

Layers, later ones winning:

1. global defaults (below) and the model's hyper-parameter defaults;
2. the packaged config for the model and dataset, ``tim4rec/configs/<model>/<dataset>.yaml``,
   when one exists (so ``--model tim4rec --dataset ml-1m`` means the published setting);
3. the user's ``--config`` files, in order;
4. a dict given to :func:`tim4rec.train`, then ``--set key=value`` overrides (values are YAML).

Keys that mean nothing here but appear in RecBole or reference YAML files (``gpu_id``,
``log_wandb``, ...) are accepted with a one-line notice. Any other unknown key is an error that
names it and where it came from. A model may translate reference keys (``is_time`` for TiM4Rec)
through its ``translate_config`` hook.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tim4rec.errors import ConfigError
from tim4rec.models import model_class

GLOBAL_DEFAULTS: dict[str, Any] = {
    "model": None,
    "dataset": None,
    # data
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "TIME_FIELD": "timestamp",
    "user_inter_num_interval": "[5,inf)",
    "item_inter_num_interval": "[5,inf)",
    "time_order": "exact",  # "exact" (int64 seconds) or "recbole" (float32 ordering, RecBole 1.2)
    "MAX_ITEM_LIST_LENGTH": 50,
    "data_cache": None,
    "output_dir": None,  # None: runs/<model>-<dataset>-seed<seed>
    # training
    "train_regime": None,  # None: the model's own regime
    "epochs": 300,
    "train_batch_size": 256,
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    "stopping_step": 10,
    "max_steps": None,
    "time_budget": None,  # seconds of training+validation wall time, across resumes
    "seed": 2020,
    "threads": None,  # None: every core this process may use
    "flush_denormal": True,  # CPU: denormal numbers (float32 < 1.2e-38) count as 0 while training
    "show_progress": True,
    "loss_type": "CE",
    "learner": "adam",
    "train_neg_sample_args": None,
    # evaluation
    "eval_batch_size": 1024,
    "topk": [10, 20, 50],
    "metrics": ["Hit", "NDCG", "MRR"],
    "valid_metric": "NDCG@10",
    "mask_history": False,
    "eval_args": None,
}

#: keys of RecBole / reference YAML files that have no effect here
IGNORED_KEYS = frozenset(
    {
        "gpu_id",
        "use_gpu",
        "log_wandb",
        "wandb_project",
        "load_col",
        "unload_col",
        "unused_col",
        "reproducibility",
        "eval_step",
        "train_from_scratch",
        "checkpoint_path",
        "checkpoint_dir",
        "state",
        "data_path",
        "benchmark_filename",
        "field_separator",
        "seq_separator",
        "save_dataset",
        "save_dataloaders",
        "dataset_save_path",
        "dataloaders_save_path",
        "log_root",
        "NEG_PREFIX",
        "LABEL_FIELD",
        "ITEM_LIST_LENGTH_FIELD",
        "LIST_SUFFIX",
        "POSITION_FIELD",
        "repeatable",
        "worker",
        "shuffle",
        "enable_amp",
        "enable_scaler",
        "nproc",
        "world_size",
        "offset",
        "ip",
        "port",
        "local_rank",
        "metric_decimal_place",
        "valid_metric_bigger",
        "eval_batch_size_per_gpu",
        "rm_dup_inter",
        "val_interval",
        "filter_inter_by_user_or_item",
        "threshold",
        "discretization",
        "normalize_field",
        "normalize_all",
        "alias_of_user_id",
        "alias_of_item_id",
        "preload_weight",
        "RATING_FIELD",
        "HEAD_ENTITY_ID_FIELD",
        "TAIL_ENTITY_ID_FIELD",
        "RELATION_ID_FIELD",
        "ENTITY_ID_FIELD",
        "kg_reverse_r",
        "entity_kg_num_interval",
        "relation_kg_num_interval",
        "clip_grad_norm",
        "require_pow",
        "log_interval",
        "numerical_features",
        "user_inter_num_interval_",
        "hidden_act_",
    }
)

METRIC_ALIASES = {"hit": "hit", "hr": "hit", "ndcg": "ndcg", "mrr": "mrr"}


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; read such strings as floats."""
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_numbers(item) for item in value]
    return value


def packaged_config(model: str, dataset: str | None) -> Path | None:
    """Path of the packaged config for (model, dataset), if there is one."""
    if not dataset or os.sep in dataset or "/" in dataset:
        return None
    candidate = resources.files("tim4rec") / "configs" / model.lower() / f"{dataset}.yaml"
    return Path(str(candidate)) if candidate.is_file() else None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(error, 'problem', error)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return {key: _numbers(value) for key, value in data.items()}


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (``lr=1e-3``, ``topk=[10,20]``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), _numbers(yaml.safe_load(value))
    except yaml.YAMLError:
        return key.strip(), value


def _source_of(layers: list[tuple[str, dict]], key: str) -> str:
    for source, layer in reversed(layers):
        if key in layer:
            return source
    return "defaults"


def load_config(
    *,
    model: str | None = None,
    dataset: str | None = None,
    config_files: Iterable[str | Path] = (),
    overrides: dict[str, Any] | None = None,
    set_args: Iterable[str] = (),
    use_packaged: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Merge all layers into one flat config; returns (config, notices)."""
    user_layers: list[tuple[str, dict]] = [(str(path), read_yaml(path)) for path in config_files]
    if overrides:
        user_layers.append(("config dict", {key: _numbers(value) for key, value in overrides.items()}))
    set_layer = dict(parse_override(text) for text in set_args)
    if set_layer:
        user_layers.append(("--set", set_layer))
    explicit = {}
    if model:
        explicit["model"] = model
    if dataset:
        explicit["dataset"] = dataset
    if explicit:
        user_layers.append(("command line", explicit))

    merged_user: dict[str, Any] = {}
    for _, layer in user_layers:
        merged_user.update(layer)
    name = merged_user.get("model")
    if not name:
        raise ConfigError("no model given: pass --model NAME or set 'model' in the config")
    cls = model_class(str(name))
    layers: list[tuple[str, dict]] = [("defaults", {**GLOBAL_DEFAULTS, **cls.hyperparameters})]
    packaged = packaged_config(cls.name, merged_user.get("dataset")) if use_packaged else None
    if packaged is not None:
        layers.append((str(packaged), read_yaml(packaged)))
    layers += user_layers

    config: dict[str, Any] = {}
    notices: list[str] = []
    for _, layer in layers:
        config.update(cls.translate_config(dict(layer), notices))
    config["model"] = cls.name
    known = set(GLOBAL_DEFAULTS) | set(cls.hyperparameters)
    for key in list(config):
        if key in known:
            continue
        if key in IGNORED_KEYS:
            notices.append(f"ignored key '{key}' (from {_source_of(layers, key)}): it has no effect in tim4rec")
            del config[key]
            continue
        raise ConfigError(f"unknown config key '{key}' (from {_source_of(layers, key)}) for model '{cls.name}'")
    validate(config)
    config["_config_files"] = [
        source for source, _ in layers if source not in ("defaults", "config dict", "--set", "command line")
    ]
    return config, notices


def validate(config: dict[str, Any]) -> None:
    """Reject settings tim4rec does not support, with a message naming the key."""
    if str(config.get("loss_type", "CE")).upper() != "CE":
        raise ConfigError(
            f"loss_type: only 'CE' (cross-entropy over all items) is supported, got {config['loss_type']!r}"
        )
    if config.get("train_neg_sample_args") not in (None, {}, "None"):
        raise ConfigError(
            "train_neg_sample_args: negative sampling is not supported (CE over all items); set it to None"
        )
    if str(config.get("learner", "adam")).lower() != "adam":
        raise ConfigError(f"learner: only 'adam' is supported, got {config['learner']!r}")
    eval_args = config.get("eval_args")
    if eval_args:
        if not isinstance(eval_args, dict):
            raise ConfigError(f"eval_args: expected a mapping, got {eval_args!r}")
        split, order, mode = eval_args.get("split"), eval_args.get("order", "TO"), eval_args.get("mode", "full")
        if split not in (None, {"LS": "valid_and_test"}) or str(order).upper() != "TO" or str(mode).lower() != "full":
            raise ConfigError(
                "eval_args: only leave-one-out ({'split': {'LS': 'valid_and_test'}, 'order': 'TO', 'mode': 'full'}) "
                f"is supported, got {eval_args}"
            )
    for key in ("epochs", "train_batch_size", "eval_batch_size", "MAX_ITEM_LIST_LENGTH", "stopping_step"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    for key in ("learning_rate", "weight_decay"):
        if not isinstance(config.get(key), (int, float)) or config[key] < 0:
            raise ConfigError(f"{key}: expected a non-negative number, got {config.get(key)!r}")
    for key in ("max_steps", "time_budget", "threads"):
        value = config.get(key)
        if value is not None and (not isinstance(value, (int, float)) or value <= 0):
            raise ConfigError(f"{key}: expected a positive number or null, got {value!r}")
    if not isinstance(config.get("flush_denormal"), bool):
        raise ConfigError(f"flush_denormal: expected true or false, got {config.get('flush_denormal')!r}")
    if config.get("train_regime") not in (None, "prefix", "causal"):
        raise ConfigError(f"train_regime: expected 'prefix', 'causal' or null, got {config['train_regime']!r}")
    metric_names(config)
    topk = config.get("topk")
    if isinstance(topk, int):
        config["topk"] = [topk]
    elif not (isinstance(topk, list) and topk and all(isinstance(k, int) and k > 0 for k in topk)):
        raise ConfigError(f"topk: expected a positive integer or a list of them, got {topk!r}")
    valid_metric_key(config)


def metric_names(config: dict[str, Any]) -> list[str]:
    names = config.get("metrics")
    if isinstance(names, str):
        names = [names]
    result = []
    for name in names or []:
        key = METRIC_ALIASES.get(str(name).lower())
        if key is None:
            raise ConfigError(f"metrics: unsupported metric {name!r}; supported: Hit, NDCG, MRR")
        result.append(key)
    return result


def valid_metric_key(config: dict[str, Any]) -> str:
    """``"NDCG@10"`` -> ``"ndcg@10"``, checked against metrics and topk."""
    text = str(config.get("valid_metric", "NDCG@10"))
    name, _, k = text.partition("@")
    key = METRIC_ALIASES.get(name.lower())
    if key is None or not k.isdigit():
        raise ConfigError(f"valid_metric: expected like 'NDCG@10', got {text!r}")
    if key not in metric_names(config) or int(k) not in config["topk"]:
        raise ConfigError(f"valid_metric {text!r} is not among metrics {config['metrics']} at topk {config['topk']}")
    return f"{key}@{int(k)}"
