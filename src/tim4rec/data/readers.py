"""Readers: turn an interaction file into a raw frame of (user, item, timestamp).

Every reader returns a :class:`pandas.DataFrame` with three columns, in file order:

- ``user`` (str): the dataset's own user id,
- ``item`` (str): the dataset's own item id,
- ``timestamp``: unix seconds, int64, or float64 when some times have fractions of a second (the
  fractions order events within a second; models see whole seconds).

Supported inputs: RecBole atomic ``.inter`` files (a file or a folder holding one), MovieLens raw
files (``ratings.dat`` with ``::``, ``u.data`` with tabs), and CSV / TSV / Parquet tables whose
columns are named by the user, item and time field keys. Times are numbers of seconds, or dates
(ISO 8601 text in CSV/TSV, datetime columns in Parquet; read as UTC when they carry no zone).

Every problem is a :class:`~tim4rec.errors.DataError` naming the file and, where there is one, the
line: a row with more or fewer fields than the header (in the unquoted formats, counted exactly),
text that is not UTF-8, an empty field, a time that is not a number or a date, or one out of range.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tim4rec.errors import DataError

RAW_COLUMNS = ("user", "item", "timestamp")
#: the largest time accepted, in seconds: integers up to here are exact in float64 (about 285 million years)
MAX_SECONDS = 2**53
_BOM = b"\xef\xbb\xbf"
_PANDAS_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@dataclass(frozen=True)
class FieldNames:
    """Column names of the user, item and time fields (RecBole's ``*_FIELD`` keys)."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"


# -- bytes and lines --------------------------------------------------------------------------------------------
def _read_bytes(path: Path, encoding: str) -> bytes:
    """The file's bytes without a UTF-8 byte-order mark; checked to be ``encoding`` text (naming the line)."""
    data = path.read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if encoding == "utf-8":
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise DataError(f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x})") from None
    return data


def _check_field_counts(path: Path, data: bytes, separator: bytes, expected: int, first_line: int) -> np.ndarray:
    """Check that every non-blank line of an unquoted file holds ``expected`` fields; return the
    line numbers (counted from ``first_line``) of the non-blank lines, i.e. of the rows pandas reads."""
    numbers = []
    for number, line in enumerate(data.split(b"\n"), start=first_line):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        if line.count(separator) + 1 != expected:
            raise DataError(
                f"{path}, line {number}: {line.count(separator) + 1} fields where the header has {expected} "
                "(a separator inside a value?)"
            )
        numbers.append(number)
    return np.asarray(numbers, dtype=np.int64)


def _parse_error(path: Path, error: Exception, expected: int, first_line: int) -> DataError:
    """A pandas tokenizer error as a DataError naming the line."""
    match = _PANDAS_FIELDS.search(str(error))
    if match:
        pandas_expected, line, seen = (int(g) for g in match.groups())
        line += first_line - 1  # pandas counts the lines of what it was given, from 1
        if pandas_expected != expected:  # pandas took its count from the first data row: that row is wrong
            line, seen = first_line, pandas_expected
        return DataError(f"{path}, line {line}: {seen} fields where the header has {expected}")
    return DataError(f"{path}: cannot parse: {error}")


# -- the three columns ------------------------------------------------------------------------------------------
def _seconds(values: pd.Series, path: Path, column: str, lines: np.ndarray) -> np.ndarray:
    """Times as unix seconds: int64, or float64 when some have fractions; numbers or dates, range-checked."""

    def fail(row: int, why: str) -> DataError:
        return DataError(f"{path}, line {lines[row]}: field '{column}' {why}: {values.iloc[row]!r}")

    if isinstance(values.dtype, pd.DatetimeTZDtype) or values.dtype.kind == "M":
        seconds = _datetime_seconds(values)
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().iloc[0] and isinstance(values.iloc[0], str):  # not a number: ISO 8601 dates?
            try:
                dates = pd.to_datetime(values, format="ISO8601", utc=True, errors="coerce")
            except (ValueError, TypeError):
                dates = None
            if dates is not None and not dates.isna().iloc[0]:
                bad = np.flatnonzero(dates.isna().to_numpy())
                if len(bad):
                    raise fail(int(bad[0]), "is not an ISO 8601 date like the first row's")
                numbers = pd.Series(_datetime_seconds(dates))
        seconds = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.flatnonzero(~np.isfinite(seconds))
        if len(bad):
            raise fail(int(bad[0]), "is not a number")
        exact = numbers.to_numpy() if numbers.dtype.kind in "iu" else None
        if exact is not None:  # integers: check the range on the exact values (2**63 must not wrap)
            out = np.flatnonzero(np.abs(exact.astype(np.float64)) > MAX_SECONDS)
            if len(out):
                raise fail(int(out[0]), f"is out of range (more than {MAX_SECONDS} seconds from 1970)")
            return exact.astype(np.int64)
    out = np.flatnonzero(~np.isfinite(seconds) | (np.abs(seconds) > MAX_SECONDS))
    if len(out):
        raise fail(int(out[0]), f"is out of range (more than {MAX_SECONDS} seconds from 1970)")
    whole = np.floor(seconds)
    return whole.astype(np.int64) if (whole == seconds).all() else seconds


def _datetime_seconds(values: pd.Series) -> np.ndarray:
    """Datetimes (naive ones read as UTC) -> float64 unix seconds, fractions kept."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_convert("UTC").dt.tz_localize(None)
    return ((values - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64, na_value=np.nan)


def _finish(frame: pd.DataFrame, path: Path, fields: FieldNames, lines: np.ndarray | int) -> pd.DataFrame:
    """Check for empty values, read the times, name the columns. ``lines``: each row's line number,
    or the first row's (the rest following it)."""
    if len(frame) == 0:
        raise DataError(f"{path}: the file holds no interactions")
    if isinstance(lines, int):
        lines = np.arange(lines, lines + len(frame))
    for column in (fields.user, fields.item, fields.time):
        values = frame[column]
        missing = values.isna() | (values.astype(str).str.strip() == "")
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0])
            raise DataError(f"{path}, line {lines[row]}: field '{column}' is empty")
    times = frame[fields.time]
    if times.dtype == object:
        times = times.str.strip()
    return pd.DataFrame(
        {
            "user": frame[fields.user].astype(str).str.strip().to_numpy(),
            "item": frame[fields.item].astype(str).str.strip().to_numpy(),
            "timestamp": _seconds(times.reset_index(drop=True), path, fields.time, lines),
        }
    )


def _require_columns(path: Path, present: list[str], fields: FieldNames) -> None:
    for key, name in (("USER_ID_FIELD", fields.user), ("ITEM_ID_FIELD", fields.item), ("TIME_FIELD", fields.time)):
        if name not in present:
            raise DataError(
                f"{path}: no column '{name}' ({key}); the file has columns {present}. Set {key} to the right name."
            )


def _read_rows(data: bytes, path: Path, separator: str, names: list[str], first_line: int, **options) -> pd.DataFrame:
    """The data rows (all text) of a delimited file whose header has ``names``."""
    try:
        frame = pd.read_csv(
            io.BytesIO(data), sep=separator, header=None, dtype=str, keep_default_na=False, na_values=[], **options
        )
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=names)
    except (pd.errors.ParserError, ValueError) as error:
        raise _parse_error(path, error, len(names), first_line) from None
    if frame.shape[1] != len(names):  # the first row set the count
        raise DataError(f"{path}, line {first_line}: {frame.shape[1]} fields where the header has {len(names)}")
    frame.columns = names
    return frame


# -- the formats ------------------------------------------------------------------------------------------------
def read_atomic(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:  # noqa: B008
    """Read a RecBole atomic ``.inter`` file (tab-separated, header ``name:type``, LF or CRLF, UTF-8)."""
    path = Path(path)
    data = _read_bytes(path, "utf-8")
    header, _, body = data.partition(b"\n")
    header_text = header.decode("utf-8").rstrip("\r")
    if not header_text.strip():
        raise DataError(f"{path}: the file is empty (no header line)")
    names = [column.split(":", 1)[0].strip() for column in header_text.split("\t")]
    _require_columns(path, names, fields)
    lines = _check_field_counts(path, body, b"\t", len(names), first_line=2)
    # quoting=3 (csv.QUOTE_NONE): titles may contain quotes
    frame = _read_rows(body, path, "\t", names, first_line=2, quoting=3, encoding="utf-8", engine="c")
    frame[names[-1]] = frame[names[-1]].str.rstrip("\r")
    return _finish(frame, path, fields, lines)


def read_movielens(path: str | Path) -> pd.DataFrame:
    """Read a MovieLens raw ratings file: ``ratings.dat`` (``::``) or ``u.data`` (tabs), no header."""
    path = Path(path)
    data = _read_bytes(path, "latin-1")
    first = data.split(b"\n", 1)[0]
    if not first.strip():
        raise DataError(f"{path}: the file is empty")
    separator = "::" if b"::" in first else "\t"
    names = ["user_id", "item_id", "rating", "timestamp"]
    lines = _check_field_counts(path, data, separator.encode(), len(names), first_line=1)
    engine = {"engine": "python"} if separator == "::" else {"engine": "c"}
    frame = _read_rows(data, path, separator, names, first_line=1, encoding="latin-1", **engine)
    return _finish(frame, path, FieldNames(), lines)


def read_table(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:  # noqa: B008
    """Read a CSV, TSV or Parquet table whose columns are named by ``fields``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
            _require_columns(path, names, fields)
            frame = pd.read_parquet(path, columns=[fields.user, fields.item, fields.time])
        except DataError:
            raise
        except Exception as error:  # pyarrow raises its own error types
            raise DataError(f"{path}: cannot read as Parquet: {error}") from None
        return _finish(frame, path, fields, 1)
    separator = "\t" if suffix in (".tsv", ".tab") else ","
    data = _read_bytes(path, "utf-8")
    header, _, body = data.partition(b"\n")
    if not header.strip():
        raise DataError(f"{path}: the file is empty")
    try:
        names = [str(c) for c in pd.read_csv(io.BytesIO(header), sep=separator, nrows=0, encoding="utf-8").columns]
    except (pd.errors.ParserError, ValueError) as error:
        raise DataError(f"{path}, line 1: cannot parse the header: {error}") from None
    _require_columns(path, names, fields)
    frame = _read_rows(body, path, separator, names, first_line=2, encoding="utf-8", engine="c")
    return _finish(frame, path, fields, 2)


def read_interactions(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:  # noqa: B008
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
