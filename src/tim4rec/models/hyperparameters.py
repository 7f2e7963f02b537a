"""Every model hyper-parameter's type and range, in one table, checked before a model is built.

The names are RecBole's and the reference repositories' (``hidden_size``, ``n_heads``,
``dropout_prob``, ...) and mean the same in every model that has them, so one rule per name
serves all models. Constraints between parameters (``n_heads`` dividing ``hidden_size``, ...) are
checked by the models' ``check_hyperparameters``.
"""

from __future__ import annotations

from typing import Any

from tim4rec.errors import ConfigError
from tim4rec.models.blocks import ACTIVATIONS
from tim4rec.models.time_paths import TIME_MODES
from tim4rec.models.tisasrec import TIME_INTERVAL_MODES
from tim4rec.values import (
    Parser,
    boolean,
    choice,
    fraction,
    int_in,
    nonnegative_number,
    open_fraction,
    optional,
    positive_int,
    positive_number,
    unit_interval,
)  # fmt: skip

#: the hyper-parameters that set the size of the model's tensors
SIZES = frozenset(
    {"hidden_size", "embedding_size", "inner_size", "n_layers", "num_layers", "n_heads", "head_dim", "d_state",
     "d_conv", "expand", "chunk_size", "nv", "nh", "time_span"}
)  # fmt: skip

RULES: dict[str, Parser] = {
    # sizes
    "hidden_size": positive_int, "embedding_size": positive_int, "inner_size": optional(positive_int),
    "n_layers": positive_int, "num_layers": positive_int, "n_heads": positive_int, "head_dim": positive_int,
    "d_state": positive_int, "d_conv": positive_int, "expand": positive_int, "chunk_size": positive_int,
    "nv": positive_int, "nh": positive_int,
    # TiSASRec's two interval tables have time_span + 1 rows of hidden_size each. Real settings use hundreds
    # to thousands of buckets (256 in the packaged configs); 2**20 (12 days of unscaled seconds) still fits
    # in 512 MiB at hidden_size 64, while an unbounded value asks the allocator for terabytes
    "time_span": int_in(1, 2**20),
    # regularisation
    "dropout_prob": fraction, "hidden_dropout_prob": fraction, "attn_dropout_prob": fraction,
    "time_drop_out": fraction, "reg_weight": nonnegative_number,
    # numerics and initialisation
    "layer_norm_eps": positive_number, "norm_eps": positive_number, "initializer_range": positive_number,
    "r_min": unit_interval, "r_max": unit_interval, "is_kai_ming_init": boolean,
    # choices
    "hidden_act": choice(*sorted(ACTIVATIONS)), "time_interval_mode": choice(*TIME_INTERVAL_MODES),
    "time_mode": choice(*TIME_MODES), "is_ffn": boolean, "p2p_residual": boolean,
    # training objective
    "mask_ratio": open_fraction, "ft_ratio": unit_interval,
}  # fmt: skip


def check_hyperparameters(model: type, values: dict[str, Any]) -> dict[str, Any]:
    """Parse every value of ``values`` by its rule, then the model's own constraints; returns the parsed dict."""
    unknown = sorted(set(values) - set(model.hyperparameters))
    if unknown:
        raise ConfigError(
            f"model '{model.name}' has no hyper-parameter {unknown}; it takes {sorted(model.hyperparameters)}"
        )
    parsed = {key: RULES[key](key, value) for key, value in values.items()}
    model.check_hyperparameters({**model.hyperparameters, **parsed})
    return parsed
