"""The preparation protocol on hand-made logs: accounting, filters, leave-one-out by time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genrec.data.dataset import load_dataset
from genrec.data.prepare import PrepareConfig, prepare
from genrec.data.raw import RawDataset


def make_raw(rows: list[tuple[str, str, float]], items: list[str]) -> RawDataset:
    users, its, times = zip(*rows)
    frame = pd.DataFrame({"item_id": items, "title": [f"T{i}" for i in items], "text": [f"text {i}" for i in items]})
    return RawDataset("hand", np.array(users, dtype=object), np.array(its, dtype=object),
                      np.array(times, dtype=np.float64), frame)


def test_leave_one_out_by_time_with_stable_ties(tmp_path):
    rows = [
        # user a: listed out of time order; c and d tie at t=3 -> source order (c first)
        ("a", "e", 5), ("a", "b", 1), ("a", "c", 3), ("a", "d", 3), ("a", "a", 0),
        # user b: exactly three events
        ("b", "a", 10), ("b", "b", 20), ("b", "c", 30),
    ]
    prepare(make_raw(rows, list("abcde")), PrepareConfig(max_history=2), tmp_path / "d")
    ds = load_dataset(tmp_path / "d")
    item = {iid: idx for idx, iid in zip(ds.items["item_idx"], ds.items["item_id"])}
    a_events = ds.interactions[ds.interactions["user_idx"] == 0]
    assert [ds.items["item_id"][i] for i in a_events["item_idx"]] == ["a", "b", "c", "d", "e"]
    assert list(a_events["split"]) == ["train", "train", "train", "valid", "test"]
    valid, test = ds.examples("valid"), ds.examples("test")
    # history truncated to the last max_history=2 items before the target
    assert valid["history"][0].tolist() == [item["b"], item["c"]]
    assert valid["target"][0] == item["d"]
    assert test["history"][0].tolist() == [item["c"], item["d"]]
    assert test["target"][0] == item["e"]
    assert valid["history"][1].tolist() == [item["a"]] and valid["target"][1] == item["b"]
    assert test["history"][1].tolist() == [item["a"], item["b"]] and test["target"][1] == item["c"]
    assert [s.tolist() for s in ds.train_sequences()] == [[item["a"], item["b"], item["c"]], [item["a"]]]


def test_every_source_row_is_accounted_for(tmp_path):
    rows = [
        ("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u1", "c", 3),  # one exact duplicate
        ("u1", "zz", 4),                                                   # unknown item
        ("u2", "a", 1), ("u2", "b", 2),                                    # too short for LOO
    ]
    manifest = prepare(make_raw(rows, list("abc")), PrepareConfig(), tmp_path / "d")
    counts = manifest["counts"]
    assert counts["source_rows"] == 7
    assert counts["kept_rows"] == 3
    assert counts["dropped_by_reason"] == {
        "item not in the items table": 1,
        "duplicate (same user, item and timestamp)": 1,
        "user has fewer than 3 events (leave-one-out needs train, valid and test)": 2,
    }
    assert counts["users"] == 1 and counts["items"] == 3
    assert json.loads((tmp_path / "d" / "manifest.json").read_text())["counts"] == counts


def test_kcore_is_iterated(tmp_path):
    # k=3. v has 2 events and goes first; then x is left with 2 (from u and w) and goes; then w
    # is left with 2 events and goes. u, y and z keep a, b, c.
    rows = [("u", i, t) for t, i in enumerate("abcx")] + [("w", i, t) for t, i in enumerate("abx")] + \
           [("v", "x", 1), ("v", "c", 2)] + [(user, i, t) for user in "yz" for t, i in enumerate("abc")]
    manifest = prepare(make_raw(rows, list("abcx")), PrepareConfig(kcore=3), tmp_path / "d")
    assert manifest["counts"]["dropped_by_reason"] == {"k-core filter (k=3)": 6}
    assert manifest["counts"]["users"] == 3 and manifest["counts"]["items"] == 3
    assert load_dataset(tmp_path / "d").users["user_id"].tolist() == ["u", "y", "z"]


def test_output_dir_is_not_overwritten_without_force(tmp_path):
    from genrec.errors import GenrecError

    rows = [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]
    prepare(make_raw(rows, list("abc")), PrepareConfig(), tmp_path / "d")
    with pytest.raises(GenrecError, match="already exists"):
        prepare(make_raw(rows, list("abc")), PrepareConfig(), tmp_path / "d")
    prepare(make_raw(rows, list("abc")), PrepareConfig(), tmp_path / "d", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp dirs left behind
