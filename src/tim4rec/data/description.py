"""What data a run uses, in one place: source, fields, filtering, order, split and sequence length.

A :class:`DataDescription` is what the config's data settings describe and what a saved model's
config stores, so training, evaluation and serving rebuild the same data from it; its field
defaults are the settings' defaults (the config declares none of its own for them). Reading one
back from a saved config (:meth:`DataDescription.from_settings`) takes the values as they were
written, already checked when the run started, without the config parser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tim4rec.data import load_interactions
from tim4rec.data.batches import SequenceData
from tim4rec.data.preprocess import FIVE_CORE, Interactions
from tim4rec.data.readers import FieldNames
from tim4rec.data.split import make_split

#: the setting (config key) of each field, where its name differs (RecBole's keys)
SETTING_NAMES = {
    "user_field": "USER_ID_FIELD", "item_field": "ITEM_ID_FIELD", "time_field": "TIME_FIELD",
    "max_seq_length": "MAX_ITEM_LIST_LENGTH",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DataDescription:
    """A dataset (a name or a path) read, filtered, ordered and split as a run reads it."""

    dataset: str | None = None
    user_field: str = FieldNames.user
    item_field: str = FieldNames.item
    time_field: str = FieldNames.time
    user_inter_num_interval: str | int | None = FIVE_CORE
    item_inter_num_interval: str | int | None = FIVE_CORE
    time_order: str = "exact"  # "recbole": float32 ordering, as RecBole 1.2
    time_values: str = "exact"  # "recbole": the float32 times RecBole's models read
    split: str = "leave_one_out"
    temporal_cut: float | None = None  # unix seconds; None: the quantile below
    temporal_cut_quantile: float = 0.9
    max_seq_length: int = 50  # the histories' length L (the setting MAX_ITEM_LIST_LENGTH)
    data_cache: str | None = None  # where named datasets are fetched to (None: ~/.cache/tim4rec)

    @classmethod
    def setting_default(cls, setting: str) -> Any:
        """The default of the config setting ``setting`` (``MAX_ITEM_LIST_LENGTH``, ``split``, ...)."""
        return next(f.default for f in dataclasses.fields(cls) if SETTING_NAMES.get(f.name, f.name) == setting)

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The config settings the description is made of."""
        return tuple(SETTING_NAMES.get(f.name, f.name) for f in dataclasses.fields(cls))

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DataDescription:
        """The description in a flat config (a saved model's or checkpoint's); absent keys take the defaults."""
        return cls(**{
            f.name: settings[SETTING_NAMES.get(f.name, f.name)]
            for f in dataclasses.fields(cls)
            if SETTING_NAMES.get(f.name, f.name) in settings
        })  # fmt: skip

    @property
    def fields(self) -> FieldNames:
        return FieldNames(self.user_field, self.item_field, self.time_field)

    def load_interactions(self) -> Interactions:
        """The dataset (fetched on first use), filtered and time-sorted as described."""
        return load_interactions(
            self.dataset,
            fields=self.fields,
            user_inter_num_interval=self.user_inter_num_interval,
            item_inter_num_interval=self.item_inter_num_interval,
            time_order=self.time_order,
            time_values=self.time_values,
            cache=self.data_cache,
        )

    def load(self, interactions: Interactions | None = None) -> SequenceData:
        """The dataset split as described, batched at ``max_seq_length``."""
        interactions = interactions if interactions is not None else self.load_interactions()
        split = make_split(self.split, cut=self.temporal_cut, quantile=self.temporal_cut_quantile)
        return SequenceData(interactions, split(interactions), self.max_seq_length)
