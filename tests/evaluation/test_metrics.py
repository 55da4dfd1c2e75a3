"""Ranking metrics on a hand-made example and against a direct per-user computation."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
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


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 12), st.integers(2, 40), st.integers(0, 2**31 - 1))
def test_agrees_with_torchmetrics(n_users, n_items, seed):
    """Full-ranking metrics from score matrices: ours (via the ranked list) vs torchmetrics'
    retrieval metrics, which rank each query's scores themselves."""
    import torch
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

    rng = np.random.default_rng(seed)
    # Distinct positive scores: no ties, and torchmetrics' MRR treats a score of exactly 0 as unranked.
    scores = 1.0 + rng.permutation(n_users * n_items).reshape(n_users, n_items).astype(np.float64)
    targets = rng.integers(0, n_items, n_users)
    ranked = np.argsort(-scores, axis=1)
    ks = (1, 5, 10, 20)
    ours = ranking_metrics(target_ranks(ranked, targets), ks=ks)
    preds = torch.tensor(scores.ravel())
    relevant = torch.zeros(n_users, n_items, dtype=torch.bool)
    relevant[torch.arange(n_users), torch.tensor(targets)] = True
    indexes = torch.arange(n_users).repeat_interleave(n_items)
    for k in ks:
        hit = RetrievalHitRate(top_k=k)(preds, relevant.ravel(), indexes=indexes)
        ndcg = RetrievalNormalizedDCG(top_k=k)(preds, relevant.ravel(), indexes=indexes)
        assert math.isclose(ours[f"recall@{k}"], float(hit), abs_tol=1e-6)
        assert math.isclose(ours[f"ndcg@{k}"], float(ndcg), abs_tol=1e-6)
    assert math.isclose(ours["mrr"], float(RetrievalMRR()(preds, relevant.ravel(), indexes=indexes)), abs_tol=1e-6)
