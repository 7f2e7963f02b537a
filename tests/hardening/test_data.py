"""Data that used to be lost or corrupted silently: each case is now read correctly or refused clearly."""

from __future__ import annotations

import calendar
import errno
import json
import os
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import synthetic_rows, write_inter
from tests.hardening.helpers import TINY_TRAIN, assert_clear_error, cli
from tim4rec.data import load_interactions
from tim4rec.data.readers import read_interactions

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def inter(path: Path, lines: list[str], header: str = HEADER, encoding: str = "utf-8", bom: bool = False) -> Path:
    data = ("\n".join([header, *lines]) + "\n").encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def parquet(path: Path, **columns: pa.Array) -> Path:
    """A two-row Parquet file; ``columns`` replace its user_id, item_id or timestamp column."""
    table = {"user_id": pa.array(["a", "a"]), "item_id": pa.array(["i", "j"]), "timestamp": pa.array([5, 6])}
    pq.write_table(pa.table({**table, **columns}), path)
    return path


def utc(*moment: int) -> int:
    """Unix seconds of a UTC moment, by the standard library's calendar (any year)."""
    return calendar.timegm(datetime(*moment).timetuple())


# -- refused, naming the line --------------------------------------------------------------------------------------
BAD_FILES = {
    "extra tab in .inter": (
        "x.inter", lambda p: inter(p, ["a\ti\t1\t5", "a\tj\t1\tx\t6"]), ["line 3", "5 fields where the header has 4"]
    ),
    "missing field in .inter": (
        "m.inter", lambda p: inter(p, ["a\ti\t1\t5", "a\tj\t6"]), ["line 3", "3 fields where the header has 4"]
    ),
    "extra comma in CSV": (
        "c.csv", lambda p: p.write_text("user_id,item_id,timestamp\na,i,5\na,j,k,6\n"), ["line 3", "4 fields"]
    ),
    "unquoted comma in an item id": (
        "t.csv", lambda p: p.write_text("user_id,item_id,timestamp\na,Movie, The,5\n"), ["line 2", "4 fields"]
    ),
    "extra :: in ratings.dat": (
        "ratings.dat", lambda p: p.write_text("1::10::5::978300760\n1::20::3::9::978302109\n"), ["line 2", "5 fields"]
    ),
    "timestamp 2**63": (
        "big.inter", lambda p: inter(p, ["a\ti\t1\t5", f"a\tj\t1\t{2**63}"]), ["line 3", "out of range"]
    ),
    "negative 2**63": (
        "neg.inter", lambda p: inter(p, ["a\ti\t1\t5", f"a\tj\t1\t-{2**63}"]), ["line 3", "out of range"]
    ),
    "non-UTF-8 bytes": (
        "l1.inter", lambda p: inter(p, ["a\tcaf\u00e9\t1\t5"], encoding="latin-1"), ["line 2", "not UTF-8"]
    ),
    "a date among numbers": (
        "d.csv", lambda p: p.write_text("user_id,item_id,timestamp\na,i,5\na,j,2001-01-01\n"), ["line 3", "not a num"]
    ),
    "a bad date among dates": (
        "dd.csv",
        lambda p: p.write_text("user_id,item_id,timestamp\na,i,2001-01-01\na,j,yesterday\n"),
        ["line 3", "ISO 8601"],
    ),
    "Parquet durations": (
        "dur.parquet",
        lambda p: parquet(p, timestamp=pa.array([1, 2], pa.duration("s"))),
        ["column 'timestamp'", "a duration is not a point in time"],
    ),
    "Parquet lists as times": (
        "list.parquet", lambda p: parquet(p, timestamp=pa.array([[1], [2]])), ["column 'timestamp'", "list<"]
    ),
    "Parquet structs as times": (
        "struct.parquet",
        lambda p: parquet(p, timestamp=pa.array([{"s": 1}, {"s": 2}])),
        ["column 'timestamp'", "struct<"],
    ),
    "Parquet datetime beyond MAX_SECONDS": (
        "far.parquet",
        lambda p: parquet(p, timestamp=pa.array([5, 2**53 + 10], pa.timestamp("s"))),
        ["line 2", "out of range", str(2**53 + 10)],
    ),
    "Parquet binary user ids not UTF-8": (
        "bu.parquet",
        lambda p: parquet(p, user_id=pa.array([b"a", b"\xffa"], pa.binary())),
        ["line 2", "field 'user_id'", "not UTF-8 text (byte 0xff)"],
    ),
    "Parquet binary item ids not UTF-8": (
        "bi.parquet",
        lambda p: parquet(p, item_id=pa.array([b"\xe9", b"j"], pa.large_binary())),
        ["line 1", "field 'item_id'", "not UTF-8 text (byte 0xe9)"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_bad_file_is_one_clear_error(case, tmp_path: Path, capsys):
    name, write, fragments = BAD_FILES[case]
    write(tmp_path / name)
    assert_clear_error(*cli(capsys, "data", "stats", tmp_path / name), name, *fragments)


# -- read correctly -------------------------------------------------------------------------------------------------
def test_sub_second_times_order_events(tmp_path: Path):
    """A file in reverse order whose events share a second: fractions decide the order, not the file."""
    rows = [f"u{u}\ti{k}\t1\t1000.{9 - k}" for u in range(5) for k in range(10)]  # later lines, earlier times
    data = load_interactions(
        inter(tmp_path / "r.inter", rows), user_inter_num_interval=None, item_inter_num_interval=None
    )
    first_user = data.item_tokens[data.items[: data.offsets[1]]].tolist()
    assert first_user == [f"i{k}" for k in reversed(range(10))]  # i9 (1000.0) first, i0 (1000.9) last: the test target
    assert data.timestamps[:10].tolist() == [1000] * 10  # models see whole seconds
    assert data.stats()["time_unit"] == "unix seconds (fractions of a second used for ordering)"


def test_utf8_bom_is_accepted(tmp_path: Path):
    frame = read_interactions(inter(tmp_path / "b.inter", ["a\ti\t1\t5"], bom=True))
    assert frame.to_dict("records") == [{"user": "a", "item": "i", "timestamp": 5}]
    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\na,i,5\n")
    assert read_interactions(tmp_path / "b.csv").to_dict("records") == [{"user": "a", "item": "i", "timestamp": 5}]


def test_parquet_datetimes_are_seconds(tmp_path: Path):
    times = pd.to_datetime(["2001-01-01 00:00:00", "2001-01-01 00:00:01.5"], format="ISO8601")
    for zone in (None, "Europe/Paris"):
        column = times if zone is None else times.tz_localize("UTC").tz_convert(zone)
        pd.DataFrame({"user_id": ["a", "a"], "item_id": ["i", "j"], "timestamp": column}).to_parquet(
            tmp_path / "p.parquet"
        )
        frame = read_interactions(tmp_path / "p.parquet")
        assert frame["timestamp"].tolist() == [978307200.0, 978307201.5]


def test_csv_iso_dates_are_seconds(tmp_path: Path):
    (tmp_path / "iso.csv").write_text("user_id,item_id,timestamp\na,i,2001-01-01T00:00:00Z\na,j,2001-01-01 01:00:00\n")
    assert read_interactions(tmp_path / "iso.csv")["timestamp"].tolist() == [978307200, 978310800]


PARQUET_TIMES = {
    "date32": (pa.array([date(2001, 1, 1), date(2001, 1, 2)], pa.date32()), [utc(2001, 1, 1), utc(2001, 1, 2)]),
    "date64": (pa.array([date(1900, 1, 1), date(2001, 1, 2)], pa.date64()), [utc(1900, 1, 1), utc(2001, 1, 2)]),
    "decimal128 with fractions": (
        pa.array([Decimal("978307200.5"), Decimal("978307201")], pa.decimal128(12, 1)), [978307200.5, 978307201.0]
    ),
    "decimal128 whole": (pa.array([Decimal("978307200"), Decimal("-5")], pa.decimal128(12, 0)), [978307200, -5]),
    "datetime[s] in 2500": (
        pa.array([datetime(2500, 1, 1), datetime(2500, 1, 1, 0, 0, 1)], pa.timestamp("s")),
        [utc(2500, 1, 1), utc(2500, 1, 1, 0, 0, 1)],
    ),
    "datetime[ms] in 1000": (
        pa.array([datetime(1000, 1, 1), datetime(1000, 6, 1)], pa.timestamp("ms")), [utc(1000, 1, 1), utc(1000, 6, 1)]
    ),
    "datetime[us] in 2500 with a zone": (
        pa.array([datetime(2500, 1, 1), datetime(2500, 1, 2)], pa.timestamp("us", tz="Europe/Paris")),
        [utc(2500, 1, 1), utc(2500, 1, 2)],  # a zone changes how an instant is shown, not the instant
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", PARQUET_TIMES, ids=list(PARQUET_TIMES))
def test_parquet_time_columns_are_seconds(case, tmp_path: Path):
    column, expected = PARQUET_TIMES[case]
    times = read_interactions(parquet(tmp_path / "t.parquet", timestamp=column))["timestamp"]
    assert times.tolist() == expected
    assert times.dtype.kind == ("f" if any(isinstance(value, float) for value in expected) else "i")


def test_parquet_binary_ids_that_are_utf8_are_text(tmp_path: Path):
    path = parquet(tmp_path / "b.parquet", user_id=pa.array(["café".encode(), b"a"], pa.binary()))
    assert read_interactions(path)["user"].tolist() == ["café", "a"]


# -- files that cannot be opened ----------------------------------------------------------------------------------
UNREADABLE = {
    "atomic .inter": lambda p: inter(p / "d.inter", ["a\ti\t1\t5"]),
    "CSV": lambda p: _write(p / "d.csv", "user_id,item_id,timestamp\na,i,5\n"),
    "ratings.dat": lambda p: _write(p / "ratings.dat", "1::10::5::978300760\n"),
    "Parquet": lambda p: parquet(p / "d.parquet"),
    "folder": lambda p: _write(p / "folder" / "folder.inter", f"{HEADER}\na\ti\t1\t5\n").parent,
}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file; the next test simulates it")
@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
def test_a_file_without_read_permission(case, tmp_path: Path, capsys):
    path = UNREADABLE[case](tmp_path)
    path.chmod(0)
    try:
        assert_clear_error(*cli(capsys, "data", "stats", path), f"{path}: cannot read: permission denied")
    finally:
        path.chmod(0o700)


@pytest.mark.parametrize("case", UNREADABLE, ids=list(UNREADABLE))
def test_a_file_the_system_refuses_to_open(case, tmp_path: Path, capsys, monkeypatch):
    """The permission error of the test above, raised where the readers open files and list folders."""
    path = UNREADABLE[case](tmp_path)

    def refusing(method):
        def refuse(self, *args, **kwargs):
            if self == path:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
            return method(self, *args, **kwargs)

        return refuse

    for name in ("open", "iterdir"):
        monkeypatch.setattr(Path, name, refusing(getattr(Path, name)))
    assert_clear_error(*cli(capsys, "data", "stats", path), f"{path}: cannot read: permission denied")


# -- settings and data that leave nothing to train on ---------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [
        ("user_inter_num_interval", "[nan,inf)"),
        ("item_inter_num_interval", "[nan,inf)"),
        ("user_inter_num_interval", "(nan,5]"),
        ("item_inter_num_interval", "[1,nan)"),
        ("user_inter_num_interval", "[inf,inf)"),
        ("item_inter_num_interval", "[5,3]"),
        ("user_inter_num_interval", "(5,5)"),
    ],
)
def test_a_meaningless_interval_is_refused(key, value, tmp_path: Path, capsys):
    data = write_inter(tmp_path / "data.inter", synthetic_rows())
    code, err = cli(
        capsys, "train", *TINY_TRAIN, "--dataset", data, "--output", tmp_path / "run", "--set", f"{key}={value}"
    )
    assert_clear_error(code, err, f"{key}: ")
    assert not (tmp_path / "run").exists()


NO_TRAINING_TARGET = {
    "leave-one-out, 3 events per user": [],
    "temporal split, one event per user before the cut": ["--set", "split=temporal", "--set", "temporal_cut=50"],
}


@pytest.mark.parametrize("case", NO_TRAINING_TARGET, ids=list(NO_TRAINING_TARGET))
def test_a_split_with_no_training_target(case, tmp_path: Path, capsys):
    """Every user's events are history, validation and test targets only: refused before training starts."""
    data = write_inter(
        tmp_path / "three.inter", [(f"u{u}", f"i{(u + k) % 7}", 1, 100 * k + u) for u in range(9) for k in range(3)]
    )
    code, err = cli(
        capsys, "train", *TINY_TRAIN, "--dataset", data, "--output", tmp_path / "run",
        "--set", "user_inter_num_interval=[1,inf)", "--set", "item_inter_num_interval=[1,inf)",
        *NO_TRAINING_TARGET[case],
    )  # fmt: skip
    assert_clear_error(code, err, f"{data}: no user has a training event after the split")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# -- resuming on other data -------------------------------------------------------------------------------------------
def trained_one_epoch(tmp_path: Path, capsys) -> tuple[list[str], list[tuple]]:
    """A one-epoch run on synthetic data in tmp_path: the train arguments (resume them) and the data's rows."""
    rows = synthetic_rows()
    data = write_inter(tmp_path / "data.inter", rows)
    train = ["train", *TINY_TRAIN, "--dataset", str(data), "--output", str(tmp_path / "run")]
    code, err = cli(capsys, *train, "--set", "epochs=1")
    assert code == 0, err
    return [*train, "--set", "epochs=2", "--resume"], rows


def latest_time_later(rows: list[tuple]) -> list[tuple]:
    """The latest event one second later: the same ids and order, another time."""
    last = max(range(len(rows)), key=lambda i: rows[i][3])
    return [(*row[:3], row[3] + 1) if i == last else row for i, row in enumerate(rows)]


def one_event_fewer(rows: list[tuple]) -> list[tuple]:
    """Without the last line of an item seen at least 6 times: every user and item passes [5,inf) as before."""
    counts = pd.Series([row[1] for row in rows]).value_counts()
    last = max(i for i, row in enumerate(rows) if counts[row[1]] >= 6)
    return rows[:last] + rows[last + 1 :]


DATA_CHANGES = {
    "one time changed": (latest_time_later, "352 interactions same, but the events or their times changed"),
    "one event removed": (one_event_fewer, "30 users same, 38 items same, interactions 352 -> 351"),
}


@pytest.mark.parametrize("case", DATA_CHANGES, ids=list(DATA_CHANGES))
def test_resume_on_changed_data_is_refused(case, tmp_path: Path, capsys):
    resume, rows = trained_one_epoch(tmp_path, capsys)
    change, fragment = DATA_CHANGES[case]
    write_inter(tmp_path / "data.inter", change(rows))
    before = (tmp_path / "run" / "results.json").read_bytes()
    assert_clear_error(*cli(capsys, *resume), "--resume: the prepared data of", "differ from the run's", fragment)
    assert (tmp_path / "run" / "results.json").read_bytes() == before


@pytest.mark.parametrize("fingerprint", ["kept", "absent (an older checkpoint)"])
def test_resume_on_the_same_data(fingerprint, tmp_path: Path, capsys):
    resume, _ = trained_one_epoch(tmp_path, capsys)
    checkpoint_path = tmp_path / "run" / "checkpoint.pt"
    if fingerprint != "kept":
        checkpoint = torch.load(checkpoint_path, weights_only=True)
        del checkpoint["data_fingerprint"]
        torch.save(checkpoint, checkpoint_path)
    code, err = cli(capsys, *resume)
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs_run"] == 2
    assert ("holds no data fingerprint" in err) == (fingerprint != "kept")
