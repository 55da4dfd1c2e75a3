"""Collaborative vectors for semantic IDs: exact small cases, then the real build on ML-100K."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from genrec.semantic_ids.build import load_ids
from genrec.semantic_ids.collaborative import (CollaborativeConfig, TextToCollaborative, collaborative_vectors,
                                               cooccurrence, mix, ppmi)
from tests.conftest import run_cli


def test_cooccurrence_counts_pairs_within_the_window_both_ways():
    counts = cooccurrence([np.array([0, 1, 2]), np.array([2, 0])], num_items=4, window=1).toarray()
    expected = np.zeros((4, 4))
    for a, b in [(0, 1), (1, 2), (2, 0)]:
        expected[a, b] += 1
        expected[b, a] += 1
    assert np.array_equal(counts, expected)
    wide = cooccurrence([np.array([0, 1, 2])], num_items=3, window=2).toarray()
    assert np.array_equal(wide, [[0, 1, 1], [1, 0, 1], [1, 1, 0]])


def test_ppmi_by_hand():
    counts = cooccurrence([np.array([0, 1]), np.array([0, 1]), np.array([1, 2])], 3, 1)
    # counts: (0,1)=(1,0)=2, (1,2)=(2,1)=1; total 6; marginals 2, 3, 1
    got = ppmi(counts).toarray()
    assert got[0, 1] == pytest.approx(np.log(2 * 6 / (2 * 3)))
    assert got[1, 2] == pytest.approx(np.log(1 * 6 / (3 * 1)))
    assert got[0, 2] == 0 and got[0, 0] == 0


def test_items_watched_together_get_close_vectors_and_unseen_items_none():
    rng = np.random.default_rng(0)
    # two taste groups (items 0-9 and 10-19); item 20 never appears in a history
    sequences = [rng.choice(np.arange(10) + 10 * (u % 2), 8, replace=False) for u in range(200)]
    vectors, seen = collaborative_vectors(sequences, 21, CollaborativeConfig(dim=4))
    assert seen.tolist() == [True] * 20 + [False]
    assert np.allclose(np.linalg.norm(vectors[:20], axis=1), 1) and not vectors[20].any()
    similarity = vectors[:20] @ vectors[:20].T
    same = similarity[:10, :10].mean(), similarity[10:, 10:].mean()
    assert min(same) > 0.5 > similarity[:10, 10:].mean()


def test_text_to_collaborative_recovers_a_linear_map():
    rng = np.random.default_rng(1)
    text, true_map = rng.normal(size=(200, 6)).astype(np.float32), rng.normal(size=(6, 3))
    target = (text @ true_map).astype(np.float32)
    fitted = TextToCollaborative.fit(text, target, ridge=1e-6)
    expected = target / np.linalg.norm(target, axis=1, keepdims=True)
    assert np.allclose(fitted.predict(text), expected, atol=1e-4)


def test_mix_weights_the_squared_norms():
    text = np.array([[3.0, 4.0]], dtype=np.float32)
    cf = np.array([[0.0, 1.0, 0.0]], dtype=np.float32)
    out = mix(text, cf, 0.25)
    assert out.shape == (1, 5)
    assert np.allclose(out, [[0.6 * np.sqrt(0.75), 0.8 * np.sqrt(0.75), 0.0, 0.5, 0.0]])


@pytest.mark.slow
def test_build_with_collaborative_weight_and_cold_start_add(ml100k_ids, tmp_path):
    data = tmp_path / "ml"
    shutil.copytree(ml100k_ids, data, ignore=shutil.ignore_patterns("ids"))
    out = run_cli("ids", "build", "--data", data, "--collaborative", "0.5")
    assert "1678 items from co-occurrence, 4 predicted from text" in out.stdout
    ids = load_ids(data)
    assert ids.config.collaborative_weight == 0.5
    assert json.loads((data / "ids" / "config.json").read_text())["embedding_dim"] == 384 + 64
    codes = ids.table.codes
    assert len({tuple(r) for r in codes.tolist()}) == 1682
    text_only = load_ids(ml100k_ids).table.codes
    # a different grouping of the catalog (not a relabelling): text-only groups split across codes
    spread = [len(set(codes[text_only[:, 0] == c, 0])) for c in np.unique(text_only[:, 0])]
    assert np.mean(spread) > 2
    items_file = tmp_path / "new.csv"
    pd.DataFrame({"item_id": ["new1"], "title": ["Toy Story 5"], "genres": ["Animation"]}).to_csv(items_file, index=False)
    run_cli("ids", "add", "--data", data, "--items", items_file)
    after = load_ids(data)
    assert after.text_to_collaborative is not None  # kept through the rewrite of ids/
    assert np.array_equal(after.table.codes[:1682], codes) and after.table.codes.shape == (1683, 4)
