"""Readers: turn an interaction file into a raw frame of (user, item, timestamp).

Every reader returns a :class:`pandas.DataFrame` with three columns, in file order:

- ``user`` (str): the dataset's own user id,
- ``item`` (str): the dataset's own item id,
- ``timestamp`` (int64): seconds.

Supported inputs: RecBole atomic ``.inter`` files (a file or a folder holding one), MovieLens raw
files (``ratings.dat`` with ``::``, ``u.data`` with tabs), and CSV / TSV / Parquet tables whose
columns are named by the user, item and time field keys. Problems are raised as
:class:`~tim4rec.errors.DataError` naming the file, line or field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tim4rec.errors import DataError

RAW_COLUMNS = ("user", "item", "timestamp")


@dataclass(frozen=True)
class FieldNames:
    """Column names of the user, item and time fields (RecBole's ``*_FIELD`` keys)."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"


def _finish(frame: pd.DataFrame, path: Path, fields: FieldNames, header_lines: int) -> pd.DataFrame:
    """Check for missing values, convert timestamps to int64 seconds, name the columns."""
    if len(frame) == 0:
        raise DataError(f"{path}: the file holds no interactions")
    for column in (fields.user, fields.item, fields.time):
        values = frame[column]
        missing = values.isna() | (values.astype(str).str.strip() == "")
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            raise DataError(f"{path}, line {row + 1 + header_lines}: field '{column}' is empty")
    times = pd.to_numeric(frame[fields.time], errors="coerce")
    bad = times.isna() | ~np.isfinite(times.to_numpy(dtype=float, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}, line {row + 1 + header_lines}: field '{fields.time}' is not a number: "
            f"{frame[fields.time].iloc[row]!r}"
        )
    if times.dtype.kind == "f":
        timestamps = np.floor(times.to_numpy()).astype(np.int64)
    else:
        timestamps = times.to_numpy().astype(np.int64)
    return pd.DataFrame(
        {
            "user": frame[fields.user].astype(str).str.strip().to_numpy(),
            "item": frame[fields.item].astype(str).str.strip().to_numpy(),
            "timestamp": timestamps,
        }
    )


def _require_columns(path: Path, present: list[str], fields: FieldNames) -> None:
    for key, name in (("USER_ID_FIELD", fields.user), ("ITEM_ID_FIELD", fields.item), ("TIME_FIELD", fields.time)):
        if name not in present:
            raise DataError(
                f"{path}: no column '{name}' ({key}); the file has columns {present}. Set {key} to the right name."
            )


def read_atomic(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:
    """Read a RecBole atomic ``.inter`` file (tab-separated, header ``name:type``, LF or CRLF)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as handle:
        header = handle.readline().rstrip("\r\n")
    if not header.strip():
        raise DataError(f"{path}: the file is empty (no header line)")
    names = [column.split(":", 1)[0].strip() for column in header.split("\t")]
    _require_columns(path, names, fields)
    wanted = [fields.user, fields.item, fields.time]
    try:
        frame = pd.read_csv(
            path,
            sep="\t",
            header=None,
            skiprows=1,
            names=names,
            usecols=wanted,
            dtype=str,
            keep_default_na=False,
            na_values=[],
            quoting=3,  # csv.QUOTE_NONE: titles may contain quotes
            encoding="utf-8",
            engine="c",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: cannot parse as a RecBole atomic file: {error}") from None
    frame[fields.time] = frame[fields.time].str.rstrip("\r")
    return _finish(frame, path, fields, header_lines=1)


def read_movielens(path: str | Path) -> pd.DataFrame:
    """Read a MovieLens raw ratings file: ``ratings.dat`` (``::``) or ``u.data`` (tabs), no header."""
    path = Path(path)
    with open(path, "rb") as handle:
        first = handle.readline()
    if not first.strip():
        raise DataError(f"{path}: the file is empty")
    separator = "::" if b"::" in first else "\t"
    names = ["user_id", "item_id", "rating", "timestamp"]
    try:
        frame = pd.read_csv(
            path,
            sep=separator,
            header=None,
            names=names,
            dtype=str,
            engine="python" if separator == "::" else "c",
            keep_default_na=False,
            encoding="latin-1",
        )
    except (pd.errors.ParserError, ValueError) as error:
        raise DataError(f"{path}: cannot parse as a MovieLens ratings file: {error}") from None
    return _finish(frame, path, FieldNames(), header_lines=0)


def read_table(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:
    """Read a CSV, TSV or Parquet table whose columns are named by ``fields``."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(path).names
            except Exception as error:  # pyarrow raises its own error types
                raise DataError(f"{path}: cannot read as Parquet: {error}") from None
            _require_columns(path, names, fields)
            frame = pd.read_parquet(path, columns=[fields.user, fields.item, fields.time])
            return _finish(frame, path, fields, header_lines=0)
        separator = "\t" if suffix in (".tsv", ".tab") else ","
        header = pd.read_csv(path, sep=separator, nrows=0, encoding="utf-8")
        _require_columns(path, [str(c) for c in header.columns], fields)
        frame = pd.read_csv(
            path,
            sep=separator,
            usecols=[fields.user, fields.item, fields.time],
            dtype=str,
            keep_default_na=False,
            encoding="utf-8",
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot parse: {error}") from None
    return _finish(frame, path, fields, header_lines=1)


def read_interactions(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:
    """Read any supported file, or a folder holding one, choosing the reader by name."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        inter = sorted(path.glob("*.inter"))
        preferred = path / f"{path.name}.inter"
        if preferred.exists():
            return read_atomic(preferred, fields)
        if len(inter) == 1:
            return read_atomic(inter[0], fields)
        if len(inter) > 1:
            raise DataError(f"{path}: several .inter files ({[p.name for p in inter]}); name one")
        for name in ("ratings.dat", "u.data"):
            if (path / name).exists():
                return read_movielens(path / name)
        raise DataError(f"{path}: the folder holds no .inter, ratings.dat or u.data file")
    suffix = path.suffix.lower()
    if suffix == ".inter":
        return read_atomic(path, fields)
    if path.name == "u.data" or suffix in (".dat", ".data"):
        return read_movielens(path)
    if suffix in (".csv", ".tsv", ".tab", ".parquet", ".pq"):
        return read_table(path, fields)
    raise DataError(
        f"{path}: unknown file type '{suffix}'; expected .inter, ratings.dat, u.data, .csv, .tsv or .parquet"
    )
