"""Amazon review dumps in the 2014 (Python-literal metadata) and 2018 (JSON) layouts."""

from __future__ import annotations

import gzip
import json

import pytest

from genrec.data.dataset import load_dataset
from tests.conftest import run_cli

# 5 users x 5 items, every user reviews every item: survives the default 5-core filter.
USERS = [f"U{u}" for u in range(5)]
ASINS = [f"B00{i}" for i in range(5)]


def reviews_2014():
    return [{"reviewerID": u, "asin": a, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
             "overall": 4.0, "summary": "fine", "unixReviewTime": 1_300_000_000 + 1000 * j + 10 * k,
             "reviewTime": "03 13, 2011"} for k, u in enumerate(USERS) for j, a in enumerate(ASINS)]


def reviews_2018():
    return [{"overall": 5.0, "verified": True, "reviewTime": f"0{1 + j} 1{k}, 2016", "reviewerID": u,
             "asin": a, "style": {"Size:": " Small"}, "reviewerName": "y", "reviewText": "good",
             "summary": "good"} for k, u in enumerate(USERS) for j, a in enumerate(ASINS)]


def meta_2014_lines():
    # The 2014 metadata is Python dict literals (single quotes), not JSON.
    return [repr({"asin": a, "title": f"Lipstick {j}", "price": 3.5 + j, "imUrl": "http://x",
                  "related": {"also_bought": ["B009"]}, "salesRank": {"Beauty": 100 + j},
                  "brand": "Acme", "categories": [["Beauty", "Makeup", "Lips"]]}) for j, a in enumerate(ASINS)]


def meta_2018_lines():
    return [json.dumps({"asin": a, "title": f"Drill &amp; Driver {j}", "brand": "Bosch", "price": f"${10 + j}.00",
                        "category": ["Tools", "Power Tools"], "main_cat": "Tools", "description": ["strong"]})
            for j, a in enumerate(ASINS)] + [json.dumps({"asin": "B_NO_REVIEWS", "title": "Lonely"})]


def write(path, lines, gz):
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def prepare_dump(folder, review_lines, meta_lines, gz):
    """Write the two files as Amazon ships them and prepare them through the CLI."""
    ext = ".json.gz" if gz else ".json"
    write(folder / f"reviews{ext}", review_lines, gz)
    write(folder / f"meta{ext}", meta_lines, gz)
    run_cli("data", "prepare", "--dataset", "amazon", "--reviews", folder / f"reviews{ext}",
            "--meta", folder / f"meta{ext}", "--out", folder / "out")
    return load_dataset(folder / "out")


@pytest.mark.parametrize("gz", [False, True])
def test_2014_layout(tmp_path, gz):
    ds = prepare_dump(tmp_path, [json.dumps(r) for r in reviews_2014()], meta_2014_lines(), gz)
    assert ds.num_users == 5 and ds.num_items == 5
    assert ds.items["text"][0] == "Title: Lipstick 0. Brand: Acme. Categories: Beauty > Makeup > Lips. Price: $3.50."
    assert ds.manifest["protocol"]["kcore"] == 5
    assert ds.examples("test")["target"].tolist() == [4] * 5  # the latest review of every user


@pytest.mark.parametrize("gz", [False, True])
def test_2018_layout(tmp_path, gz):
    extra = [json.dumps({"reviewerID": "LONE", "asin": "B000", "overall": 1.0, "unixReviewTime": 5})]
    ds = prepare_dump(tmp_path, [json.dumps(r) for r in reviews_2018()] + extra, meta_2018_lines(), gz)
    assert ds.num_users == 5 and ds.num_items == 5
    assert ds.items["text"][1] == "Title: Drill & Driver 1. Brand: Bosch. Categories: Tools > Power Tools. Price: $11.00."
    counts = ds.manifest["counts"]
    assert counts["source_rows"] == 26 and counts["dropped_by_reason"] == {"k-core filter (k=5)": 1}
    # reviewTime "MM DD, YYYY" orders events when unixReviewTime is absent: month j+1 -> item j
    assert ds.examples("test")["target"].tolist() == [4] * 5


def test_truncated_gzip_meta(tmp_path):
    write(tmp_path / "reviews.json", [json.dumps(r) for r in reviews_2014()], False)
    full = gzip.compress("".join(line + "\n" for line in meta_2014_lines() * 200).encode())
    (tmp_path / "meta.json.gz").write_bytes(full[:-20])
    result = run_cli("data", "prepare", "--dataset", "amazon", "--reviews", tmp_path / "reviews.json",
                     "--meta", tmp_path / "meta.json.gz", "--out", tmp_path / "out", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "meta.json.gz" in result.stderr and "truncated or corrupt gzip" in result.stderr
    assert not (tmp_path / "out").exists()
