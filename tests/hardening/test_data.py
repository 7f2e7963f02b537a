"""Data that used to be lost or corrupted silently: each case is now read correctly or refused clearly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.hardening.helpers import assert_clear_error, cli
from tim4rec.data import load_interactions
from tim4rec.data.readers import read_interactions

HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def inter(path: Path, lines: list[str], header: str = HEADER, encoding: str = "utf-8", bom: bool = False) -> Path:
    data = ("\n".join([header, *lines]) + "\n").encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


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
