"""Ranking metrics on a hand-made example and against a direct per-user computation."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from genrec.evaluation.metrics import ranking_metrics, target_ranks


def test_hand_made_example():
    ranked = np.array([[5, 3, 9], [1, 2, 3], [7, 8, 4], [0, 6, 2]])
    targets = np.array([9, 1, 5, 6])
    ranks = target_ranks(ranked, targets)
    assert ranks.tolist() == [2, 0, math.inf, 1]
    m = ranking_metrics(ranks, ks=(1, 3))
    assert m["recall@1"] == 0.25 and m["recall@3"] == 0.75
    assert math.isclose(m["ndcg@3"], (1 / math.log2(4) + 1 + 0 + 1 / math.log2(3)) / 4)
    assert math.isclose(m["mrr"], (1 / 3 + 1 + 0 + 1 / 2) / 4)


@given(st.lists(st.one_of(st.integers(0, 30), st.just(math.inf)), min_size=1, max_size=50))
def test_matches_per_user_definition(ranks):
    m = ranking_metrics(np.array(ranks, dtype=float), ks=(1, 5, 10, 20))
    for k in (1, 5, 10, 20):
        assert math.isclose(m[f"recall@{k}"], sum(r < k for r in ranks) / len(ranks))
        assert math.isclose(m[f"ndcg@{k}"], sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks))
