"""Ranking metrics with one held-out target per user (leave-one-out): Recall@K (= HR@K), NDCG@K, MRR."""

from __future__ import annotations

import numpy as np


def target_ranks(ranked_items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its row of `ranked_items` (B, K); inf where it is absent."""
    ranked_items = np.asarray(ranked_items)
    hits = ranked_items == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1).astype(np.float64), np.inf)


def per_user_metrics(ranks: np.ndarray, ks=(1, 5, 10, 20)) -> dict[str, np.ndarray]:
    """Each user's Recall@k, NDCG@k for each k, and reciprocal rank (0 for targets outside the list)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = hit.astype(np.float64)
        out[f"ndcg@{k}"] = np.where(hit, 1.0 / np.log2(ranks + 2), 0.0)
    out["mrr"] = 1.0 / (ranks + 1)  # 1/inf = 0 when absent
    return out


def ranking_metrics(ranks: np.ndarray, ks=(1, 5, 10, 20)) -> dict[str, float]:
    """Means over users of `per_user_metrics` (0 for no users)."""
    return {name: float(values.mean()) if len(values) else 0.0
            for name, values in per_user_metrics(ranks, ks).items()}
