"""Readers: turn an interaction file into a raw frame of (user, item, timestamp).

Every reader returns a :class:`pandas.DataFrame` with three columns, in file order:

- ``user`` (str): the dataset's own user id,
- ``item`` (str): the dataset's own item id,
- ``timestamp``: unix seconds, int64, or float64 when some times have fractions of a second (the
  fractions order events within a second; models see whole seconds).

Supported inputs: RecBole atomic ``.inter`` files (a file or a folder holding one), MovieLens raw
files (``ratings.dat`` with ``::``, ``u.data`` with tabs), and CSV / TSV / Parquet tables whose
columns are named by the user, item and time field keys. Times are numbers of seconds, or dates
(ISO 8601 text in CSV/TSV; in Parquet, datetime and date columns, dates at midnight; read as UTC when
they carry no zone). Parquet datetimes are read from their integer ticks, so every year within
``MAX_SECONDS`` is read, not only pandas' nanosecond range (1677-2262).

Every problem is a :class:`~tim4rec.errors.DataError` naming the file and, where there is one, the
line (in Parquet, the row, counted from 1): a file that cannot be opened, a row with more or fewer
fields than the header (in the unquoted formats, counted exactly), text or Parquet binary ids that
are not UTF-8, an empty field, a time that is not a number or a date, one out of range, or a Parquet
time column of another type (a duration, a time of day, a list...).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import pandas as pd

from tim4rec.errors import DataError
from tim4rec.times import MAX_SECONDS

if TYPE_CHECKING:
    import pyarrow as pa

RAW_COLUMNS = ("user", "item", "timestamp")
_BOM = b"\xef\xbb\xbf"
_PANDAS_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")


@dataclass(frozen=True)
class FieldNames:
    """Column names of the user, item and time fields (RecBole's ``*_FIELD`` keys)."""

    user: str = "user_id"
    item: str = "item_id"
    time: str = "timestamp"


# -- bytes and lines --------------------------------------------------------------------------------------------
def _cannot_read(path: Path, error: OSError) -> DataError:
    """An OS refusal (no permission, a folder where a file was expected, an I/O error) as one line naming ``path``."""
    reason = error.strerror or str(error)
    return DataError(f"{path}: cannot read: {reason[:1].lower()}{reason[1:]}")


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    """``path`` open for binary reading; an OS error while opening or reading it is :func:`_cannot_read`'s line."""
    try:
        with path.open("rb") as handle:
            yield handle
    except OSError as error:
        raise _cannot_read(path, error) from None


def _read_bytes(path: Path, encoding: str) -> bytes:
    """The file's bytes without a UTF-8 byte-order mark; checked to be ``encoding`` text (naming the line)."""
    with _reading(path) as handle:
        data = handle.read()
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


#: integer ticks per second of each Arrow datetime unit
_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` with dictionary encoding undone (a Parquet column may be stored either way)."""
    import pyarrow as pa

    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def _tick_seconds(ticks: pa.ChunkedArray, per_second: int) -> pd.Series:
    """Integer ticks (``per_second`` to a second) as seconds: int64 when all are whole, else float64;
    nulls as NaN. Whole seconds and the rest are taken apart in integers, so no value loses precision
    before :func:`_seconds` checks its range."""
    import pyarrow.compute as pc

    whole, rest = np.divmod(pc.fill_null(ticks, 0).to_numpy(), per_second)
    seconds = whole + rest / per_second if rest.any() else whole
    missing = ticks.is_null().to_numpy(zero_copy_only=False)
    if missing.any():
        seconds = seconds.astype(np.float64)
        seconds[missing] = np.nan
    return pd.Series(seconds)


def _parquet_times(column: pa.ChunkedArray, path: Path, name: str) -> pd.Series:
    """A Parquet time column as numbers of unix seconds (or text of them or of dates) for :func:`_seconds`.

    Datetimes are instants (a zone only changes how they are shown) read from their integer ticks;
    dates are midnight UTC; decimals are numbers, float64 when they have fractions.
    """
    import pyarrow as pa

    column = _decoded(column)
    kind = column.type
    if pa.types.is_date(kind):
        column = column.cast(pa.timestamp("ms"))  # even date32's extreme days fit int64 milliseconds
        kind = column.type
    if pa.types.is_timestamp(kind):
        return _tick_seconds(column.cast(pa.int64()), _TICKS_PER_SECOND[kind.unit])
    if pa.types.is_decimal(kind):
        try:
            return column.cast(pa.int64()).to_pandas()  # refused when a value has a fraction or exceeds int64
        except pa.ArrowInvalid:
            return column.cast(pa.float64()).to_pandas()
    readable = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_null,
    )
    if any(test(kind) for test in readable):  # numbers, or text of numbers or dates: for _seconds
        return column.to_pandas()
    why = (
        "a duration is not a point in time"
        if pa.types.is_duration(kind)
        else "expected numbers of unix seconds, dates or datetimes"
    )
    raise DataError(f"{path}: column '{name}' (TIME_FIELD) holds {kind} values: {why}")


def _parquet_ids(column: pa.ChunkedArray, path: Path, name: str) -> pd.Series:
    """A Parquet user or item id column: binary ids must be UTF-8 text (they become str ids); nested
    values (lists, structs) are no ids."""
    import pyarrow as pa

    column = _decoded(column)
    kind = column.type
    if pa.types.is_nested(kind):
        raise DataError(f"{path}: column '{name}' holds {kind} values, not ids")
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        try:
            column = column.cast(pa.large_string())  # checks that every value is UTF-8
        except pa.ArrowInvalid:
            raise _first_non_utf8(column, path, name) from None
    return column.to_pandas()


def _first_non_utf8(column: pa.ChunkedArray, path: Path, name: str) -> DataError:
    """The error naming the first value of a binary column that is not UTF-8 (only called when one is not)."""
    for row, value in enumerate(column.to_pylist()):
        try:
            (value or b"").decode("utf-8")
        except UnicodeDecodeError as error:
            return DataError(
                f"{path}, line {row + 1}: field '{name}' is not UTF-8 text (byte {value[error.start]:#04x})"
            )
    return DataError(f"{path}: field '{name}' is not UTF-8 text")


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
        return _read_parquet(path, fields)
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


def _read_parquet(path: Path, fields: FieldNames) -> pd.DataFrame:
    """Read a Parquet table's id and time columns with pyarrow (see :func:`_parquet_times`)."""
    import pyarrow.parquet as pq

    with _reading(path) as handle:
        try:
            parquet = pq.ParquetFile(handle)
            _require_columns(path, parquet.schema_arrow.names, fields)
            table = parquet.read(columns=[fields.user, fields.item, fields.time])
        except DataError:
            raise
        except Exception as error:  # pyarrow raises its own error types
            raise DataError(f"{path}: cannot read as Parquet: {error}") from None
    frame = pd.DataFrame(
        {
            fields.user: _parquet_ids(table.column(fields.user), path, fields.user),
            fields.item: _parquet_ids(table.column(fields.item), path, fields.item),
            fields.time: _parquet_times(table.column(fields.time), path, fields.time),
        }
    )
    return _finish(frame, path, fields, 1)


def _read_folder(path: Path, fields: FieldNames) -> pd.DataFrame:
    """Read the folder's ``<folder>.inter``, its only ``.inter`` file, or its MovieLens ratings file."""
    try:
        names = sorted(entry.name for entry in path.iterdir())
    except OSError as error:
        raise _cannot_read(path, error) from None
    inter = [name for name in names if name.endswith(".inter")]
    if f"{path.name}.inter" in inter:
        return read_atomic(path / f"{path.name}.inter", fields)
    if len(inter) == 1:
        return read_atomic(path / inter[0], fields)
    if len(inter) > 1:
        raise DataError(f"{path}: several .inter files ({inter}); name one")
    for name in ("ratings.dat", "u.data"):
        if name in names:
            return read_movielens(path / name)
    raise DataError(f"{path}: the folder holds no .inter, ratings.dat or u.data file")


def read_interactions(path: str | Path, fields: FieldNames = FieldNames()) -> pd.DataFrame:  # noqa: B008
    """Read any supported file, or a folder holding one, choosing the reader by name."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path, fields)
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
