"""`genrec ids build` / `ids add` on real MovieLens-100K with the real encoder and faiss."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genrec.data.dataset import load_dataset
from genrec.semantic_ids.build import load_ids
from genrec.semantic_ids.table import SemanticIdTable
from genrec.semantic_ids.trie import PrefixTrie
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_every_item_has_a_unique_code_tuple(ml100k_ids):
    ids = load_ids(ml100k_ids)
    codes = ids.table.codes
    assert codes.shape == (1682, 4)
    assert len({tuple(r) for r in codes.tolist()}) == 1682
    assert ids.table.codebook_sizes == (256, 256, 256, 256)
    assert ids.table.trie.lookup(codes).tolist() == list(range(1682))
    report = json.loads((ml100k_ids / "ids" / "report.json").read_text())
    assert report["items"] == 1682 and report["collapsed_levels"] == []
    assert all(lv["used"] > 200 for lv in report["levels"][:3])  # no collapse on real data
    assert (ml100k_ids / "ids" / "report.png").stat().st_size > 10_000


def test_save_load_is_identical(ml100k_ids, tmp_path):
    ids = load_ids(ml100k_ids)
    rebuilt = PrefixTrie.from_codes(ids.table.codes, ids.table.codebook_sizes)
    for key, arr in rebuilt.state().items():
        assert np.array_equal(ids.table.trie.state()[key], arr), key
    ids.table.save(tmp_path / "t.safetensors")
    again = SemanticIdTable.load(tmp_path / "t.safetensors")
    assert np.array_equal(again.codes, ids.table.codes) and again.codebook_sizes == ids.table.codebook_sizes
    # The quantizer reproduces the stored codes of the catalog from the cached embeddings.
    from genrec.semantic_ids.encoder import TextEncoder

    vectors = TextEncoder(ids.config.encoder).encode(load_dataset(ml100k_ids).items["text"].tolist())
    assert np.array_equal(ids.quantizer.encode(vectors), ids.table.codes[:, :3])


def test_cold_start_add(ml100k_ids, tmp_path):
    import shutil

    data = tmp_path / "ml"
    shutil.copytree(ml100k_ids, data)
    before = load_ids(data).table.codes.copy()
    toy_story_text = load_dataset(data).items["text"][0]
    new = pd.DataFrame({"item_id": ["new1", "new2", "new3"],
                        "title": ["Toy Story 5", "Space Wars", "Toy Story"],
                        "genres": ["Animation|Children's|Comedy", "Sci-Fi|Action", "Animation"]})
    items_file = tmp_path / "new.csv"
    new.to_csv(items_file, index=False)
    out = run_cli("ids", "add", "--data", data, "--items", items_file)
    assert "added 3 cold-start items" in out.stdout
    ids = load_ids(data)
    codes = ids.table.codes
    assert codes.shape == (1685, 4)
    assert np.array_equal(codes[:1682], before)  # existing codes unchanged
    assert len({tuple(r) for r in codes.tolist()}) == 1685
    assert ids.table.trie.lookup(codes[1682:]).tolist() == [1682, 1683, 1684]
    items = load_dataset(data).items
    assert items["item_id"].tolist()[-3:] == ["new1", "new2", "new3"]
    assert items["cold_start"].tolist()[-4:] == [False, True, True, True]
    assert ids.report["cold_start_items"] == 3
    # an item whose text equals Toy Story's gets Toy Story's prefix and the next collision slot
    same = pd.DataFrame({"item_id": ["dup"], "text": [toy_story_text]})
    same.to_csv(items_file, index=False)
    run_cli("ids", "add", "--data", data, "--items", items_file, "--text-cols", "text")
    codes = load_ids(data).table.codes
    toy_group = (codes[:, :3] == codes[0, :3]).all(axis=1)
    assert codes[-1, :3].tolist() == codes[0, :3].tolist()
    assert codes[-1, 3] == codes[toy_group][:-1, 3].max() + 1
    again = run_cli("ids", "add", "--data", data, "--items", items_file, "--text-cols", "text", check=False)
    assert again.returncode != 0 and "already have semantic IDs" in again.stderr


def test_rqvae_method_via_cli(ml100k_dir, tmp_path):
    import shutil

    data = tmp_path / "ml"
    shutil.copytree(ml100k_dir, data, ignore=shutil.ignore_patterns("ids"))
    run_cli("ids", "build", "--data", data, "--method", "rqvae", "--levels", "3", "--codebook", "64",
            "--rqvae-epochs", "60")
    ids = load_ids(data)
    assert ids.config.method == "rqvae" and ids.table.codes.shape == (1682, 4)
    assert len({tuple(r) for r in ids.table.codes.tolist()}) == 1682
    assert all(lv["used"] >= 16 for lv in ids.report["levels"][:3])
