"""Configuration: flat YAML files with RecBole's key names, read once into a typed :class:`Config`.

Layers, later ones winning:

1. the settings' defaults (the :class:`Config` fields below) and the model's hyper-parameter defaults;
2. the packaged config for the model and dataset, ``tim4rec/configs/<model>/<dataset>.yaml``,
   when one exists (so ``--model tim4rec --dataset ml-1m`` means the published setting);
3. the user's ``--config`` files, in order;
4. a dict given to :func:`tim4rec.train`, then ``--set key=value`` overrides (values are YAML).

Every setting is declared once, as a field of :class:`Config` with its type, default and parser;
:func:`load_config` merges the layers, parses each value (a wrong type or range is a
:class:`~tim4rec.errors.ConfigError` naming the key and where the value came from), and returns
the finished object. Nothing downstream applies defaults again.

Keys that mean nothing here but appear in RecBole or reference YAML files (``gpu_id``,
``log_wandb``, ...) are accepted with a one-line notice. Any other unknown key is an error that
names it and where it came from. A model may translate reference keys (``is_time`` for TiM4Rec)
through its ``translate_config`` hook.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tim4rec.data.batches import REGIMES, Regime
from tim4rec.data.description import DataDescription
from tim4rec.data.preprocess import TIME_ORDERS, parse_interval
from tim4rec.data.split import SPLITS
from tim4rec.errors import ConfigError
from tim4rec.models import model_class
from tim4rec.values import (
    Parser,
    boolean,
    choice,
    fraction,
    int_in,
    nonnegative_number,
    number,
    optional,
    positive_int,
    positive_number,
    switch,
    text,
)  # fmt: skip

METRIC_ALIASES = {"hit": "hit", "hr": "hit", "ndcg": "ndcg", "mrr": "mrr"}
LEAVE_ONE_OUT_EVAL_ARGS = {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"}

#: keys of RecBole / reference YAML files that have no effect here
IGNORED_KEYS = frozenset(
    {
        "gpu_id", "use_gpu", "log_wandb", "wandb_project", "load_col", "unload_col", "unused_col",
        "reproducibility", "eval_step", "train_from_scratch", "checkpoint_path", "checkpoint_dir",
        "state", "data_path", "benchmark_filename", "field_separator", "seq_separator",
        "save_dataset", "save_dataloaders", "dataset_save_path", "dataloaders_save_path", "log_root",
        "NEG_PREFIX", "LABEL_FIELD", "ITEM_LIST_LENGTH_FIELD", "LIST_SUFFIX", "POSITION_FIELD",
        "repeatable", "worker", "shuffle", "enable_amp", "enable_scaler", "nproc", "world_size",
        "offset", "ip", "port", "local_rank", "metric_decimal_place", "valid_metric_bigger",
        "eval_batch_size_per_gpu", "rm_dup_inter", "val_interval", "filter_inter_by_user_or_item",
        "threshold", "discretization", "normalize_field", "normalize_all", "alias_of_user_id",
        "alias_of_item_id", "preload_weight", "RATING_FIELD", "HEAD_ENTITY_ID_FIELD",
        "TAIL_ENTITY_ID_FIELD", "RELATION_ID_FIELD", "ENTITY_ID_FIELD", "kg_reverse_r",
        "entity_kg_num_interval", "relation_kg_num_interval", "clip_grad_norm", "require_pow",
        "log_interval", "numerical_features", "user_inter_num_interval_", "hidden_act_",
    }
)  # fmt: skip


# -- parsers of the settings that only runs have ---------------------------------------------------------------
def interval(key: str, value: Any) -> str | int | None:
    parse_interval(value, key)  # raises ConfigError when malformed
    return value


def cutoffs(key: str, value: Any) -> list[int]:
    values = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not (isinstance(values, list) and values and all(positive_int(key, k) for k in values)):
        raise ConfigError(f"{key}: expected a positive integer or a list of them, got {value!r}")
    return list(values)


def metric_list(key: str, value: Any) -> list[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names:
        raise ConfigError(f"{key}: expected a metric name or a list of them, got {value!r}")
    for name in names:
        if METRIC_ALIASES.get(str(name).lower()) is None:
            raise ConfigError(f"{key}: unsupported metric {name!r}; supported: Hit, NDCG, MRR")
    return list(names)


def only(expected: Any, why: str) -> Parser:
    """A RecBole key whose only supported value is ``expected`` (case-insensitive for strings)."""

    def parse(key: str, value: Any) -> Any:
        same = str(value).lower() == str(expected).lower() if isinstance(expected, str) else value == expected
        if not same:
            raise ConfigError(f"{key}: {why}, got {value!r}")
        return value

    return parse


def no_negative_sampling(key: str, value: Any) -> None:
    if value not in (None, {}, "None"):
        raise ConfigError(f"{key}: negative sampling is not supported (CE over all items); set it to None")
    return None


def recbole_eval_args(key: str, value: Any) -> dict | None:
    if not value:
        return None
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    split, order, mode = value.get("split"), value.get("order", "TO"), value.get("mode", "full")
    if (
        split not in (None, LEAVE_ONE_OUT_EVAL_ARGS["split"])
        or str(order).upper() != "TO"
        or str(mode).lower() != "full"
    ):
        raise ConfigError(f"{key}: only leave-one-out ({LEAVE_ONE_OUT_EVAL_ARGS}) is supported, got {value}")
    return value


def _setting(default: Any, parse: Parser, *, resumable: bool = False) -> Any:
    """A config field: its default, its parser and whether ``--resume`` may change it (a limit, not the experiment)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"parse": parse, "resumable": resumable})
    return field(default=default, metadata={"parse": parse, "resumable": resumable})


def _data(setting: str) -> Any:
    """The default of a data setting: the data description's."""
    return DataDescription.setting_default(setting)


def _plain(value: Any) -> Any:
    """A setting's value as plain data (an enum as its name), as YAML, JSON and weights-only files hold it."""
    return value.value if isinstance(value, enum.Enum) else value


def _regime(key: str, value: Any) -> Regime:
    """A training regime by its name (the one place a regime's name is read)."""
    return Regime(choice(*(r.value for r in REGIMES))(key, value))


@dataclass(frozen=True)
class Config:
    """Every setting of a run, parsed; the model's hyper-parameters in ``hyperparameters``."""

    model: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = _setting(None, optional(text))
    # data
    # data (:class:`~tim4rec.data.description.DataDescription`: its defaults and meanings)
    USER_ID_FIELD: str = _setting(_data("USER_ID_FIELD"), text)
    ITEM_ID_FIELD: str = _setting(_data("ITEM_ID_FIELD"), text)
    TIME_FIELD: str = _setting(_data("TIME_FIELD"), text)
    user_inter_num_interval: str | int | None = _setting(_data("user_inter_num_interval"), interval)
    item_inter_num_interval: str | int | None = _setting(_data("item_inter_num_interval"), interval)
    time_order: str = _setting(_data("time_order"), choice(*TIME_ORDERS))
    time_values: str = _setting(_data("time_values"), choice(*TIME_ORDERS))
    split: str = _setting(_data("split"), choice(*SPLITS))
    temporal_cut: float | None = _setting(_data("temporal_cut"), optional(number))
    temporal_cut_quantile: float = _setting(_data("temporal_cut_quantile"), fraction)
    MAX_ITEM_LIST_LENGTH: int = _setting(_data("MAX_ITEM_LIST_LENGTH"), positive_int)
    data_cache: str | None = _setting(_data("data_cache"), optional(text), resumable=True)
    output_dir: str | None = _setting(None, optional(text), resumable=True)  # None: runs/<model>-<dataset>-seed<seed>
    # training
    train_regime: Regime | None = _setting(None, optional(_regime))  # None: the model's own regime
    window_stride: int | None = _setting(None, optional(positive_int))  # causal windows start every s targets; None: L
    samples_per_epoch: int | None = _setting(None, optional(positive_int))  # drawn anew each epoch; None: all
    epochs: int = _setting(300, positive_int, resumable=True)
    train_batch_size: int = _setting(256, positive_int)
    micro_batch: int = _setting(256, positive_int, resumable=True)  # rows per forward/backward: bounds the memory
    learning_rate: float = _setting(1e-3, nonnegative_number)
    weight_decay: float = _setting(0.0, nonnegative_number)
    # the learning rate times lr_decay_factor after lr_decay_patience epochs without a better validation; None: fixed
    lr_decay_patience: int | None = _setting(None, optional(positive_int))
    lr_decay_factor: float = _setting(0.5, fraction)
    stopping_step: int = _setting(10, positive_int)
    max_steps: int | None = _setting(None, optional(positive_int), resumable=True)
    time_budget: float | None = _setting(None, optional(positive_number), resumable=True)  # s, across resumes
    seed: int = _setting(2020, int_in(0, 2**32 - 1))  # what every RNG takes (NumPy's is the narrowest)
    device: str = _setting("auto", text, resumable=True)  # auto, cpu, cuda, cuda:N
    threads: int | None = _setting(None, optional(positive_int), resumable=True)  # None: the cores idle at start
    flush_denormal: bool = _setting(True, boolean, resumable=True)  # CPU: float32 < 1.2e-38 read as 0 in training
    reuse_memory: bool = _setting(True, boolean, resumable=True)  # CPU: freed memory kept for the next step
    fused_cross_entropy: bool = _setting(True, boolean, resumable=True)  # output layer and loss in one pass
    compile: bool = _setting(False, boolean, resumable=True)  # torch.compile the scans' chunks and the gated norm
    kernels: str = _setting("auto", choice("auto", "torch"), resumable=True)  # torch: never mamba-ssm's CUDA kernels
    mixed_precision: str = _setting("off", switch("bf16", "fp16"))  # the forward under torch.autocast
    sampled_negatives: int | None = _setting(None, optional(positive_int))  # None: softmax over all items
    negative_distribution: str = _setting("popularity", choice("uniform", "popularity"))  # Q of the negatives
    show_progress: bool = _setting(True, boolean, resumable=True)
    tensorboard: bool = _setting(True, boolean, resumable=True)  # event files in <output>/tensorboard
    mlflow: bool = _setting(False, boolean, resumable=True)  # also an MLflow run (needs the mlflow package)
    loss_type: str = _setting("CE", only("CE", "only 'CE' (cross-entropy over all items) is supported"))
    learner: str = _setting("adam", only("adam", "only 'adam' is supported"))
    train_neg_sample_args: None = _setting(None, no_negative_sampling)
    # evaluation
    eval_batch_size: int = _setting(1024, positive_int, resumable=True)
    topk: list[int] = _setting([10, 20, 50], cutoffs)
    metrics: list[str] = _setting(["Hit", "NDCG", "MRR"], metric_list)
    valid_metric: str = _setting("NDCG@10", text)
    mask_history: bool = _setting(False, boolean)
    evaluate_test: bool = _setting(True, boolean)  # false: no test metrics at the end (tuning reads them once, later)
    eval_args: dict | None = _setting(None, recbole_eval_args)
    # where the values came from (not settings)
    config_files: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        self.valid_key  # noqa: B018 -- checks valid_metric against metrics and topk
        if self.window_stride is not None and self.window_stride > self.MAX_ITEM_LIST_LENGTH:
            raise ConfigError(
                f"window_stride: expected at most MAX_ITEM_LIST_LENGTH = {self.MAX_ITEM_LIST_LENGTH}, "
                f"got {self.window_stride}"
            )

    # -- derived values ------------------------------------------------------------------------------------------
    @property
    def max_seq_length(self) -> int:
        return self.MAX_ITEM_LIST_LENGTH

    @property
    def metric_names(self) -> list[str]:
        """``["hit", "ndcg", "mrr"]``: the metrics' canonical names."""
        return [METRIC_ALIASES[str(name).lower()] for name in self.metrics]

    @property
    def valid_key(self) -> str:
        """``"NDCG@10"`` -> ``"ndcg@10"``, checked against metrics and topk."""
        name, _, k = str(self.valid_metric).partition("@")
        key = METRIC_ALIASES.get(name.lower())
        if key is None or not k.isdigit():
            raise ConfigError(f"valid_metric: expected like 'NDCG@10', got {self.valid_metric!r}")
        if key not in self.metric_names or int(k) not in self.topk:
            raise ConfigError(
                f"valid_metric {self.valid_metric!r} is not among metrics {self.metrics} at topk {self.topk}"
            )
        return f"{key}@{int(k)}"

    # -- the data it describes --------------------------------------------------------------------------------------
    @property
    def data(self) -> DataDescription:
        """The data these settings describe (``data.load()``: read, filtered, ordered and split)."""
        return DataDescription.from_settings({name: getattr(self, name) for name in DataDescription.settings()})

    # -- conversions ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat key -> value form of the YAML files (hyper-parameters beside the settings)."""
        flat = {"model": self.model}
        flat.update({f.name: _plain(getattr(self, f.name)) for f in _SETTING_FIELDS})
        flat.update(self.hyperparameters)
        return flat

    @classmethod
    def from_dict(cls, flat: dict[str, Any]) -> Config:
        """Parse a flat dict that :meth:`to_dict` wrote (a saved model's or checkpoint's config)."""
        config, _ = load_config(overrides=flat, use_packaged=False)
        return config

    def changed_for_resume(self, saved: Config) -> list[str]:
        """Keys whose values differ from ``saved`` and may not change when a run is resumed."""
        mine, theirs = self.to_dict(), saved.to_dict()
        resumable = {f.name for f in _SETTING_FIELDS if f.metadata["resumable"]}
        return sorted(k for k in set(mine) | set(theirs) if k not in resumable and mine.get(k) != theirs.get(k))


_SETTING_FIELDS = tuple(f for f in dataclasses.fields(Config) if "parse" in f.metadata)
SETTINGS = {f.name: f for f in _SETTING_FIELDS}


def setting_default(name: str) -> Any:
    """The default value of a global setting."""
    f = SETTINGS[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


# -- reading files and overrides --------------------------------------------------------------------------------
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
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
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
    dataset: str | os.PathLike | None = None,
    config_files: Iterable[str | os.PathLike] = (),
    overrides: dict[str, Any] | None = None,
    set_args: Iterable[str] = (),
    use_packaged: bool = True,
) -> tuple[Config, list[str]]:
    """Merge all layers into one :class:`Config`; returns (config, notices)."""
    user_layers: list[tuple[str, dict]] = [(str(path), read_yaml(path)) for path in config_files]
    if overrides:
        user_layers.append(("config dict", {str(key): _numbers(value) for key, value in overrides.items()}))
    set_layer = dict(parse_override(text) for text in set_args)
    if set_layer:
        user_layers.append(("--set", set_layer))
    explicit: dict[str, Any] = {}
    if model:
        explicit["model"] = model
    if dataset:
        explicit["dataset"] = os.fspath(dataset)
    if explicit:
        user_layers.append(("command line", explicit))

    merged_user: dict[str, Any] = {}
    for _, layer in user_layers:
        merged_user.update(layer)
    name = merged_user.get("model")
    if not name:
        raise ConfigError("no model given: pass --model NAME or set 'model' in the config")
    if not isinstance(name, str):
        raise ConfigError(f"model: expected a model name, got {name!r}")
    cls = model_class(name)
    dataset_name = merged_user.get("dataset")
    packaged = packaged_config(cls.name, dataset_name if isinstance(dataset_name, str) else None)
    layers: list[tuple[str, dict]] = [("defaults", dict(cls.hyperparameters))]
    if use_packaged and packaged is not None:
        layers.append((str(packaged), read_yaml(packaged)))
    layers += user_layers

    values: dict[str, Any] = {}
    notices: list[str] = []
    for _, layer in layers:
        values.update(cls.translate_config(dict(layer), notices))
    values.pop("model", None)
    settings: dict[str, Any] = {}
    hyperparameters: dict[str, Any] = {}
    for key, value in values.items():
        if key in SETTINGS:
            try:
                settings[key] = SETTINGS[key].metadata["parse"](key, value)
            except ConfigError as error:
                raise ConfigError(f"{error} (from {_source_of(layers, key)})") from None
        elif key in cls.hyperparameters:
            hyperparameters[key] = value
        elif key in IGNORED_KEYS:
            notices.append(f"ignored key '{key}' (from {_source_of(layers, key)}): it has no effect in tim4rec")
        else:
            raise ConfigError(f"unknown config key '{key}' (from {_source_of(layers, key)}) for model '{cls.name}'")
    sources = tuple(
        source for source, _ in layers if source not in ("defaults", "config dict", "--set", "command line")
    )
    try:
        hyperparameters = cls.Hyperparameters.parse(hyperparameters, cls.name).to_dict()
    except ConfigError as error:
        key = str(error).split(":", 1)[0]
        where = f" (from {_source_of(layers, key)})" if key in cls.hyperparameters else ""
        raise ConfigError(f"{error}{where}") from None
    config = Config(model=cls.name, hyperparameters=hyperparameters, config_files=sources, **settings)
    return config, notices
