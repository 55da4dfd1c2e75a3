"""Generic files with the user's column names, and one-line errors for malformed input."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from genrec.data.dataset import load_dataset
from tests.conftest import run_cli

EVENTS = [("alice", "m1", "2024-01-01T10:00:00"), ("alice", "m2", "2024-01-02T10:00:00"),
          ("alice", "m3", "2024-01-03T10:00:00"), ("bob", "m2", "2024-01-01T09:00:00"),
          ("bob", "m3", "2024-01-01T09:30:00"), ("bob", "m1", "2024-01-05T00:00:00")]
ITEMS = [("m1", "Alpha", "a movie about letters"), ("m2", "Beta", "the sequel"), ("m3", "Gamma", "rays")]


def write_files(folder, fmt: str):
    inter = pd.DataFrame(EVENTS, columns=["customer", "product", "when"])
    items = pd.DataFrame(ITEMS, columns=["product", "name", "blurb"])
    paths = {}
    for name, frame in (("events", inter), ("catalog", items)):
        path = folder / f"{name}.{fmt}"
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "tsv":
            frame.to_csv(path, index=False, sep="\t")
        elif fmt == "parquet":
            frame.to_parquet(path, index=False)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
        elif fmt == "csv.gz":
            with gzip.open(path, "wt") as f:
                frame.to_csv(f, index=False)
        paths[name] = path
    return paths


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl", "csv.gz"])
def test_other_column_names_through_flags(tmp_path, fmt):
    from genrec.data.generic import ColumnNames, load_generic
    from genrec.data.prepare import PrepareConfig, prepare

    paths = write_files(tmp_path, fmt)
    names = ColumnNames(user="customer", item="product", time="when")
    prepare(load_generic(paths["events"], paths["catalog"], None, names), PrepareConfig(), tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    assert ds.items["item_id"].tolist() == ["m1", "m2", "m3"]
    assert ds.items["text"].tolist() == ["name: Alpha. blurb: a movie about letters",
                                         "name: Beta. blurb: the sequel", "name: Gamma. blurb: rays"]
    assert ds.items["title"].tolist() == ["Alpha", "Beta", "Gamma"]
    assert ds.users["user_id"].tolist() == ["alice", "bob"]
    assert ds.examples("test")["target"].tolist() == [2, 0]  # alice -> m3, bob -> m1 (by time)


def test_cli_with_flags(tmp_path):
    inter = tmp_path / "log.csv"
    inter.write_text("uid,iid,ts\n" + "".join(f"{u},{i},{t}\n" for u, i, t in
                                               [("1", "x", 5), ("1", "y", 6), ("1", "z", 7)]))
    items = tmp_path / "items.tsv"
    items.write_text("iid\ttitle\tgenre\tprice\nx\tEx\tfun\t1.5\ny\tWhy\tsad\t2\nz\tZed\tfun\t3\n")
    run_cli("data", "prepare", "--interactions", inter, "--items", items, "--user-col", "uid",
            "--item-col", "iid", "--time-col", "ts", "--out", tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    # numeric columns (price) are not text; string ones (title, genre) are
    assert ds.items["text"].tolist() == ["title: Ex. genre: fun", "title: Why. genre: sad", "title: Zed. genre: fun"]
    out = run_cli("data", "prepare", "--interactions", inter, "--items", items, "--user-col", "uid",
                  "--item-col", "iid", "--time-col", "ts", "--text-cols", "title", "--out", tmp_path / "out",
                  "--force")
    assert "source rows" in out.stdout
    assert load_dataset(tmp_path / "out").items["text"].tolist() == ["Ex", "Why", "Zed"]


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_column_name(tmp_path):
    inter = tmp_path / "log.csv"
    inter.write_text("user,item,timestamp\n1,a,1\n")
    result = run_cli("data", "prepare", "--interactions", inter, "--out", tmp_path / "out", check=False)
    assert_one_line_error(result, str(inter), "line 1", "column 'user_id'", "no such column")
    assert not (tmp_path / "out").exists()


def test_unparsable_timestamp(tmp_path):
    inter = tmp_path / "log.csv"
    inter.write_text("user_id,item_id,timestamp\n1,a,1\n1,b,2\n1,c,yesterday\n1,d,4\n")
    result = run_cli("data", "prepare", "--interactions", inter, "--out", tmp_path / "out", check=False)
    assert_one_line_error(result, str(inter), "line 4", "column 'timestamp'", "'yesterday'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]  # nothing partial left behind


def test_wrong_field_count_and_bad_json(tmp_path):
    inter = tmp_path / "log.csv"
    inter.write_text("user_id,item_id,timestamp\n1,a,1\n1,b\n")
    assert_one_line_error(run_cli("data", "prepare", "--interactions", inter, "--out", tmp_path / "o", check=False),
                          str(inter), "line 3", "expected 3 fields, found 2")
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"user_id": 1, "item_id": "a", "timestamp": 1}\n{"user_id": 1, "item_id": \n')
    assert_one_line_error(run_cli("data", "prepare", "--interactions", jl, "--out", tmp_path / "o", check=False),
                          str(jl), "line 2", "invalid JSON")
    assert not (tmp_path / "o").exists()


def test_truncated_gzip(tmp_path):
    body = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{i}\n" for u in range(50) for i in range(200))
    full = gzip.compress(body.encode())
    inter = tmp_path / "log.csv.gz"
    inter.write_bytes(full[: len(full) // 2])
    result = run_cli("data", "prepare", "--interactions", inter, "--out", tmp_path / "out", check=False)
    assert_one_line_error(result, str(inter), "truncated or corrupt gzip")
    assert "line " in result.stderr
    assert not (tmp_path / "out").exists()
