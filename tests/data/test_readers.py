from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import write_inter
from tim4rec.data.readers import FieldNames, read_atomic, read_interactions, read_movielens, read_table
from tim4rec.errors import DataError


def test_atomic_crlf_and_lf_read_the_same(tmp_path: Path):
    rows = [("a", "x", 3, 100), ("a", "y", 4, 50), ("b", "x", 1, 70)]
    lf = read_atomic(write_inter(tmp_path / "lf.inter", rows))
    crlf = read_atomic(write_inter(tmp_path / "crlf.inter", rows, newline="\r\n"))
    pd.testing.assert_frame_equal(lf, crlf)
    assert lf["timestamp"].dtype == "int64"
    assert lf["timestamp"].tolist() == [100, 50, 70]
    assert lf["user"].tolist() == ["a", "a", "b"]


def test_atomic_extra_columns_and_custom_field_names(tmp_path: Path):
    path = write_inter(
        tmp_path / "d.inter",
        [("1", "k", "9", "10.0", "z")],
        header="session:token\tgood:token\textra:float\tt:float\tmore:token_seq",
    )
    frame = read_atomic(path, FieldNames("session", "good", "t"))
    assert frame.to_dict("records") == [{"user": "1", "item": "k", "timestamp": 10}]


def test_atomic_titles_with_quotes(tmp_path: Path):
    path = write_inter(tmp_path / "q.inter", [("u", 'One "Quoted" Title, The (1999)', 5, 1)])
    assert read_atomic(path)["item"][0] == 'One "Quoted" Title, The (1999)'


def test_missing_column_names_field_and_file(tmp_path: Path):
    path = write_inter(tmp_path / "bad.inter", [("a", "x", 1)], header="user_id:token\titem_id:token\trating:float")
    with pytest.raises(DataError, match=r"bad\.inter.*'timestamp'.*TIME_FIELD"):
        read_atomic(path)


def test_non_numeric_timestamp_names_line(tmp_path: Path):
    path = write_inter(tmp_path / "t.inter", [("a", "x", 1, 5), ("a", "y", 1, "yesterday")])
    with pytest.raises(DataError, match=r"t\.inter, line 3: field 'timestamp' is not a number: 'yesterday'"):
        read_atomic(path)


def test_empty_file(tmp_path: Path):
    (tmp_path / "e.inter").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_atomic(tmp_path / "e.inter")
    write_inter(tmp_path / "h.inter", [])
    with pytest.raises(DataError, match="no interactions"):
        read_atomic(tmp_path / "h.inter")


def test_movielens_formats(tmp_path: Path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n")
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    dat = read_movielens(tmp_path / "ratings.dat")
    assert dat.to_dict("records")[0] == {"user": "1", "item": "10", "timestamp": 978300760}
    udata = read_interactions(tmp_path / "u.data")
    assert udata["item"].tolist() == ["242", "302"]


def test_csv_tsv_parquet(tmp_path: Path):
    frame = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [3, 4], "other": [0, 0]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_csv(tmp_path / "d.tsv", index=False, sep="\t")
    frame.to_parquet(tmp_path / "d.parquet")
    expected = pd.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "timestamp": [3, 4]})
    for name in ("d.csv", "d.tsv", "d.parquet"):
        pd.testing.assert_frame_equal(read_interactions(tmp_path / name), expected)
    with pytest.raises(DataError, match="no column 'ts'"):
        read_table(tmp_path / "d.parquet", FieldNames(time="ts"))


def test_folder_and_unknown_inputs(tmp_path: Path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    write_inter(folder / "mydata.inter", [("a", "x", 1, 5)])
    assert len(read_interactions(folder)) == 1
    with pytest.raises(DataError, match="no such file"):
        read_interactions(tmp_path / "missing.inter")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unknown file type"):
        read_interactions(tmp_path / "x.json")
