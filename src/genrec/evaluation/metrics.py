"""Ranking metrics with one held-out target per user (leave-one-out): Recall@K (= HR@K), NDCG@K, MRR."""

from __future__ import annotations

import numpy as np


def target_ranks(ranked_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its row of `ranked_items` (B, K); inf where it is absent."""
    ranked_items = np.asarray(ranked_items)
    hits = ranked_items == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1).astype(np.float64), np.inf)


def ranking_metrics(ranks: np.ndarray, ks=(1, 5, 10, 20)) -> dict[str, float]:
    """Mean Recall@k, NDCG@k for each k, and MRR (0 for targets outside the list)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2), 0.0).mean()) if len(ranks) else 0.0
    out["mrr"] = float((1.0 / (ranks + 1)).mean()) if len(ranks) else 0.0  # 1/inf = 0 when absent
    return out
