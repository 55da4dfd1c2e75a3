"""The evaluation harness: any recommender, the leave-one-out protocol, full ranking.

Every user of the split is one example (history -> the held-out target). Each recommender ranks
the whole catalog minus everything the user has already interacted with before the target (the
full history, not just the prompt's last items) and returns its top-K. From the target's rank in
that list come Recall/NDCG@K and MRR; from the lists themselves, catalog coverage and the
popularity of what is recommended. Per-user results are saved so two runs can be compared with a
paired test (`genrec report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from genrec.data.dataset import Dataset
from genrec.errors import GenrecError
from genrec.evaluation.metrics import ranking_metrics, target_ranks
from genrec.files import atomic_write_json

DEFAULT_KS = (1, 5, 10, 20)


class Recommender(Protocol):
    kind: str

    def recommend(self, users: np.ndarray, histories: list[np.ndarray], seen: list[np.ndarray], k: int,
                  include_only: np.ndarray | None = None) -> np.ndarray:
        """(B, k) item indices, best first, -1 padded; never an item of `seen`, and only items of
        `include_only` when given."""


@dataclass
class Evaluation:
    split: str
    ks: tuple[int, ...]
    metrics: dict[str, float]
    per_user: pd.DataFrame   # user_idx, target, rank (0-based, inf if absent), items (top-K)
    seconds: float

    def summary(self, kind: str, run: Path | None) -> dict:
        return {"split": self.split, "users": len(self.per_user), "model": kind, "ks": list(self.ks),
                "run": str(run.resolve()) if run else None, "metrics": self.metrics,
                "seconds": round(self.seconds, 2)}


def seen_items(dataset: Dataset, split: str) -> dict[int, np.ndarray]:
    """Per user, every item interacted with before the split's target: train (+ valid for test
    and cold)."""
    before = ("train",) if split == "valid" else ("train", "valid")
    inter = dataset.interactions
    inter = inter[inter["split"].isin(before)]
    return {int(u): g.to_numpy(np.int64) for u, g in inter.groupby("user_idx")["item_idx"]}


def train_item_counts(dataset: Dataset) -> np.ndarray:
    """Training interactions per item."""
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    return np.bincount(train["item_idx"].to_numpy(), minlength=dataset.num_items)


def popularity_percentile(dataset: Dataset) -> np.ndarray:
    """Per item, the share of items with fewer training interactions (0 = least, ~1 = most popular)."""
    counts = train_item_counts(dataset)
    return np.searchsorted(np.sort(counts), counts, side="left") / max(len(counts), 1)


def list_metrics(lists: np.ndarray, num_items: int, popularity: np.ndarray, ks) -> dict[str, float]:
    """Catalog coverage@k (share of items in any top-k list) and popularity@k (mean popularity
    percentile of the recommended items)."""
    out = {}
    for k in ks:
        top = lists[:, :k]
        top = top[top >= 0]
        out[f"coverage@{k}"] = float(len(np.unique(top)) / num_items) if num_items else 0.0
        out[f"popularity@{k}"] = float(popularity[top].mean()) if top.size else 0.0
    return out


def evaluate(recommender: Recommender, dataset: Dataset, split: str = "test", ks=DEFAULT_KS,
             batch_size: int = 64, max_users: int = 0,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Top-max(ks) lists for every example of `split`, their metrics and the per-user ranks."""
    start = time.perf_counter()
    examples = dataset.examples(split)
    if max_users:
        examples = examples.iloc[:max_users]
    users = examples["user_idx"].to_numpy()
    histories = [np.asarray(h, dtype=np.int64) for h in examples["history"]]
    targets = examples["target"].to_numpy()
    seen_by_user = seen_items(dataset, split)
    seen = [seen_by_user.get(int(u), np.zeros(0, np.int64)) for u in users]
    k_max = max(ks)
    lists = []
    for lo in range(0, len(users), batch_size):
        sl = slice(lo, lo + batch_size)
        lists.append(recommender.recommend(users[sl], histories[sl], seen[sl], k_max))
        if progress is not None:
            progress(len(users[sl]))
    lists = np.concatenate(lists) if lists else np.zeros((0, k_max), np.int64)
    ranks = target_ranks(lists, targets)
    metrics = ranking_metrics(ranks, ks)
    metrics.update(list_metrics(lists, dataset.num_items, popularity_percentile(dataset), [k for k in ks if k >= 10]))
    per_user = pd.DataFrame({"user_idx": users.astype(np.int64), "target": targets.astype(np.int64),
                             "rank": ranks, "items": list(lists.astype(np.int64))})
    return Evaluation(split, tuple(ks), metrics, per_user, time.perf_counter() - start)


def evaluate_new_item_slots(recommender, dataset: Dataset, split: str, ks, share: float, max_users: int = 0,
                            progress: Callable[[int], None] | None = None) -> Evaluation:
    """The cold-start protocol: for each k its own lists with round(share * k) places kept for
    the items added after training (see `recommenders.NewItemSlots`)."""
    from genrec.evaluation.recommenders import NewItemSlots

    new_items = dataset.items.loc[dataset.items["cold_start"].astype(bool), "item_idx"].to_numpy()
    if not len(new_items):
        raise GenrecError(f"{dataset.path} has no items added by `genrec ids add`")
    wrapped = NewItemSlots(recommender, new_items, share)
    results = [evaluate(wrapped, dataset, split, (k,), max_users=max_users, progress=progress) for k in sorted(ks)]
    metrics = {}
    for result in results:
        metrics.update({key: value for key, value in result.metrics.items() if key != "mrr"})
    metrics["mrr"] = results[-1].metrics["mrr"]
    metrics["new_item_share"] = share
    last = results[-1]
    return Evaluation(split, tuple(sorted(ks)), metrics, last.per_user, sum(r.seconds for r in results))


def save_evaluation(run: Path, kind: str, result: Evaluation) -> Path:
    """RUN/metrics-<split>.json and RUN/per_user-<split>.parquet."""
    path = run / f"metrics-{result.split}.json"
    atomic_write_json(path, result.summary(kind, run))
    tmp = run / f".per_user-{result.split}.parquet.tmp"
    result.per_user.to_parquet(tmp, index=False)
    tmp.replace(run / f"per_user-{result.split}.parquet")
    return path

