"""Item metadata (titles, years, genres) from RecBole atomic ``.item`` files, for showing recommendations.

A named dataset brings its file (:func:`~tim4rec.data.datasets.fetch_item_metadata`); for a file
dataset, ``<name>.item`` beside ``<name>.inter`` is used when present. Columns are read by their
RecBole names: ``movie_title``/``title``/``name`` become ``title``, ``release_year``/``year``
become ``year``, ``class``/``genre``/``genres`` become ``genres``; other columns keep their names.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from tim4rec.data.readers import _read_bytes
from tim4rec.errors import DataError

_RENAMES = {"movie_title": "title", "name": "title", "release_year": "year", "class": "genres", "genre": "genres"}


def read_item_metadata(path: str | Path, item_field: str = "item_id") -> dict[str, dict[str, str]]:
    """``{item id: {"title": ..., "year": ..., "genres": ..., ...}}`` from an atomic ``.item`` file."""
    path = Path(path)
    data = _read_bytes(path, "utf-8")
    try:
        frame = pd.read_csv(io.BytesIO(data), sep="\t", dtype=str, keep_default_na=False, quoting=3, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
        raise DataError(f"{path}: cannot parse as a RecBole .item file: {error}") from None
    frame.columns = [str(c).split(":", 1)[0].strip() for c in frame.columns]
    if item_field not in frame.columns:
        raise DataError(f"{path}: no column '{item_field}' (ITEM_ID_FIELD); the file has columns {list(frame.columns)}")
    frame = frame.rename(columns={c: _RENAMES.get(c, c) for c in frame.columns if c != item_field})
    frame = frame.loc[:, ~frame.columns.duplicated()]
    ids = frame.pop(item_field).str.strip()
    return {item: {k: str(v).strip() for k, v in row.items()} for item, row in zip(ids, frame.to_dict("records"))}


def item_metadata_path(dataset: str, cache: str | None = None) -> Path | None:
    """The ``.item`` file of a named dataset (fetched) or beside a file dataset, or None."""
    from tim4rec.data.datasets import NAMED_DATASETS, fetch_item_metadata

    if dataset in NAMED_DATASETS and not Path(dataset).exists():
        return fetch_item_metadata(dataset, cache, quiet=True)
    path = Path(dataset).expanduser()
    candidate = path / f"{path.name}.item" if path.is_dir() else path.with_suffix(".item")
    return candidate if candidate.is_file() else None
