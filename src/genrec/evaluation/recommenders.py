"""Recommenders the harness can evaluate: trained runs and the non-neural baselines.

Baselines are fitted on the training interactions only and saved as a run directory of their own
(`config.json` + `baseline.safetensors`), so `genrec evaluate` and `genrec report` treat them like
any trained run:

- `pop` (MostPop): the most interacted-with items, the same list for everyone.
- `itemknn`: item-item cosine similarity over the user x item matrix; a user's score for an item
  is the sum of its similarities to the user's history items, over each item's top neighbours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from genrec.data.dataset import Dataset, load_dataset
from genrec.errors import GenrecError
from genrec.evaluation.harness import train_item_counts
from genrec.files import atomic_write_json
from genrec.runtime import usable_bf16

BASELINES = ("pop", "itemknn")


def _top_unseen(scores: np.ndarray, seen: list[np.ndarray], k: int, include_only=None) -> np.ndarray:
    """(B, k) best items per row with each row's seen items removed (and, with `include_only`,
    every other item), ties by item index, -1 padded."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    if include_only is not None:
        allowed = np.zeros(scores.shape[1], dtype=bool)
        allowed[include_only] = True
        scores[:, ~allowed] = -np.inf
    for row, items in enumerate(seen):
        scores[row, items] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.where(np.isinf(np.take_along_axis(scores, top, 1)), -1, top)
    if top.shape[1] < k:
        top = np.concatenate([top, np.full((len(top), k - top.shape[1]), -1)], 1)
    return top.astype(np.int64)


@dataclass
class BaselineConfig:
    model: str = "pop"
    neighbours: int = 100    # itemknn: similarities kept per item
    shrink: float = 10.0     # itemknn: damps similarities of rarely co-occurring items


class Popularity:
    kind = "pop"

    def __init__(self, counts: np.ndarray):
        self.counts = counts.astype(np.float64)

    @classmethod
    def fit(cls, dataset: Dataset, config: BaselineConfig) -> "Popularity":
        return cls(train_item_counts(dataset))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts}

    def recommend(self, users, histories, seen, k, include_only=None):
        return _top_unseen(np.broadcast_to(self.counts, (len(users), len(self.counts))), seen, k, include_only)


class ItemKNN:
    kind = "itemknn"

    def __init__(self, neighbours: np.ndarray, similarities: np.ndarray):
        self.neighbours, self.similarities = neighbours, similarities   # (items, n) each

    @classmethod
    def fit(cls, dataset: Dataset, config: BaselineConfig) -> "ItemKNN":
        train = dataset.interactions[dataset.interactions["split"] == "train"]
        n_items, n_users = dataset.num_items, dataset.num_users
        if n_items * n_users > 200_000_000:
            raise GenrecError(f"itemknn keeps a dense {n_items} x {n_users} matrix; too large for this catalog")
        matrix = torch.zeros(n_items, n_users)
        items, users = (torch.as_tensor(train[c].to_numpy(copy=True)) for c in ("item_idx", "user_idx"))
        matrix[items, users] = 1.0
        co = matrix @ matrix.T                                            # (items, items) co-occurrences
        norms = torch.sqrt(torch.diagonal(co))
        sim = co / (norms[:, None] * norms[None, :] + config.shrink)
        sim.fill_diagonal_(0.0)
        n = min(config.neighbours, n_items - 1) if n_items > 1 else 1
        top = torch.topk(sim, n, dim=1)
        return cls(top.indices.numpy().astype(np.int64), top.values.numpy().astype(np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"neighbours": self.neighbours, "similarities": self.similarities}

    def recommend(self, users, histories, seen, k, include_only=None):
        n_items = len(self.neighbours)
        scores = np.zeros((len(users), n_items))
        for row, items in enumerate(seen):   # score from the whole known history, not the prompt
            np.add.at(scores[row], self.neighbours[items].ravel(), self.similarities[items].ravel())
        # Items no neighbour reaches keep 0 and rank after every scored one; ties go by index.
        return _top_unseen(scores, seen, k, include_only)


def fit_baseline(data_dir: Path, out: Path, config: BaselineConfig) -> Path:
    from genrec.semantic_ids.table import save_arrays

    if config.model not in BASELINES:
        raise GenrecError(f"unknown baseline {config.model!r} (expected one of {', '.join(BASELINES)})")
    dataset = load_dataset(data_dir)
    model = {"pop": Popularity, "itemknn": ItemKNN}[config.model].fit(dataset, config)
    out.mkdir(parents=True, exist_ok=True)
    save_arrays(out / "baseline.safetensors", model.arrays())
    atomic_write_json(out / "config.json", {"model": config.model, "baseline": asdict(config),
                                            "data_dir": str(Path(data_dir).resolve())})
    return out


class ModelRecommender:
    """A trained run: constrained beam search (tiger, causal) or a full-softmax score (sasrec)."""

    def __init__(self, loaded, beam: int = 20, bf16: bool = False):
        self.loaded, self.kind, self.beam, self.bf16 = loaded, loaded.kind, beam, usable_bf16(bf16)

    def recommend(self, users, histories, seen, k, include_only=None):
        from genrec.decoding.recommend import recommend_batch

        run = self.loaded
        allow = None if include_only is None else [include_only] * len(users)   # masked at every trie level
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            items, _ = recommend_batch(run.model, run.kind, run.data, run.trie, users, histories, k=k,
                                       beam=max(self.beam, k), exclude_history=False, exclude=seen,
                                       include_only=allow)
        return items


class NewItemSlots:
    """TIGER's cold-start protocol: the last round(share * k) places of every list go to the
    best items added after training (`cold_start` in items.parquet), the rest to the usual top."""

    def __init__(self, base, new_items: np.ndarray, share: float):
        self.base, self.kind, self.new_items, self.share = base, base.kind, np.asarray(new_items), share

    def recommend(self, users, histories, seen, k):
        slots = min(k, max(1, round(self.share * k)))
        new = self.base.recommend(users, histories, seen, slots, include_only=self.new_items)
        usual = self.base.recommend(users, histories, seen, k)
        lists = np.full((len(users), k), -1, dtype=np.int64)
        for row in range(len(users)):
            picked = [i for i in new[row] if i >= 0]
            taken = set(picked)
            rest = [i for i in usual[row] if i >= 0 and i not in taken][: k - len(picked)]
            merged = rest + picked
            lists[row, : len(merged)] = merged
        return lists


def load_recommender(run: Path, beam: int = 20, bf16: bool = False):
    """(recommender, dataset) for a run directory of any kind."""
    from genrec.semantic_ids.table import load_arrays

    config_path = run / "config.json"
    if not config_path.exists():
        raise GenrecError(f"{run} is not a run directory (no config.json)")
    meta = json.loads(config_path.read_text())
    if meta.get("model") in BASELINES:
        arrays = load_arrays(run / "baseline.safetensors")
        model = Popularity(arrays["counts"]) if meta["model"] == "pop" else ItemKNN(arrays["neighbours"],
                                                                                     arrays["similarities"])
        return model, load_dataset(meta["data_dir"])
    from genrec.training.run import load_run

    loaded = load_run(run)
    return ModelRecommender(loaded, beam=beam, bf16=bf16), loaded.dataset
