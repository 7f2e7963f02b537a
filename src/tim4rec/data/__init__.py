"""Data: readers, named datasets, filtering and id maps, splits, batching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tim4rec.data.batches import Batch, SequenceData
from tim4rec.data.datasets import NAMED_DATASETS, fetch
from tim4rec.data.preprocess import FIVE_CORE, Interactions, build_interactions
from tim4rec.data.readers import FieldNames, read_interactions
from tim4rec.data.split import LeaveOneOut, TargetIndex, TemporalSplit, make_split
from tim4rec.errors import DataError

DEFAULT_FIELDS = FieldNames()


def load_interactions(
    dataset: str | Path,
    *,
    fields: FieldNames = DEFAULT_FIELDS,
    user_inter_num_interval: Any = FIVE_CORE,
    item_inter_num_interval: Any = FIVE_CORE,
    time_order: str = "exact",
    time_values: str = "exact",
    cache: str | None = None,
) -> Interactions:
    """Read a named dataset (fetched on first use) or a file/folder, then filter and sort it."""
    if dataset is None or str(dataset).strip() == "":
        raise DataError("no dataset given: pass --dataset NAME_OR_PATH or set 'dataset' in the config")
    name = str(dataset)
    if name in NAMED_DATASETS and not Path(name).exists():
        path = fetch(name, cache)
        if path.suffix != ".inter":  # a GroupLens raw file
            fields = FieldNames()
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(
                f"'{name}' is neither a named dataset ({sorted(NAMED_DATASETS)}) nor an existing file or folder"
            )
    raw = read_interactions(path, fields)
    return build_interactions(
        raw,
        user_inter_num_interval=user_inter_num_interval,
        item_inter_num_interval=item_inter_num_interval,
        time_order=time_order,
        time_values=time_values,
        source=path,
    )


__all__ = [
    "Batch", "FieldNames", "Interactions", "LeaveOneOut", "NAMED_DATASETS", "SequenceData", "TargetIndex",
    "TemporalSplit", "build_interactions", "fetch", "load_interactions", "make_split", "read_interactions",
]  # fmt: skip
