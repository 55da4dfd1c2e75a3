"""The cold-start slice: a copy of a prepared dataset with some test items held out of training.

A sample of the items that are some user's test target is removed from the catalog and from every
interaction, so no model sees them in training; they wait in `cold_items.parquet` for
`genrec ids add`, which gives them semantic IDs from their text alone. The users whose test
target was such an item become the `cold` split (`cold.parquet`: their history without held-out
items, the held-out target by item id); their other splits stay as they were. A generative
model can then rank the new items through their codes, while SASRec, whose item embeddings of
those items never received a positive example, in effect cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.dataset import load_dataset
from genrec.errors import GenrecError
from genrec.files import atomic_directory, atomic_write_json


def make_cold_start(data_dir: Path, out: Path, fraction: float = 0.05, seed: int = 0,
                    overwrite: bool = False) -> dict:
    """Write the dataset without a `fraction` of the catalog (drawn among test targets) to `out`."""
    if not 0 < fraction < 1:
        raise GenrecError(f"--fraction must be in (0, 1), got {fraction}")
    dataset = load_dataset(data_dir)
    test, valid = dataset.examples("test"), dataset.examples("valid")
    candidates = np.unique(test["target"].to_numpy())
    count = min(len(candidates), max(1, round(fraction * dataset.num_items)))
    held = np.sort(np.random.default_rng(seed).choice(candidates, count, replace=False))
    is_held = np.zeros(dataset.num_items, dtype=bool)
    is_held[held] = True
    new_index = np.cumsum(~is_held) - 1              # the kept items, renumbered 0..n-1
    new_index[is_held] = -1

    def keep_history(history) -> np.ndarray:
        history = np.asarray(history, dtype=np.int64)
        return new_index[history[~is_held[history]]].astype(np.int32)

    inter = dataset.interactions[~is_held[dataset.interactions["item_idx"].to_numpy()]].copy()
    inter["item_idx"] = new_index[inter["item_idx"].to_numpy()].astype(inter["item_idx"].dtype)
    inter = inter.sort_values(["user_idx", "position"], kind="stable")
    inter["position"] = inter.groupby("user_idx").cumcount().astype(np.int32)

    def split_examples(frame: pd.DataFrame) -> pd.DataFrame:
        kept = frame[~is_held[frame["target"].to_numpy()]].copy()
        kept["history"] = [keep_history(h) for h in kept["history"]]
        kept["target"] = new_index[kept["target"].to_numpy()].astype(frame["target"].dtype)
        return kept

    cold_rows = test[is_held[test["target"].to_numpy()]]
    items = dataset.items
    cold = pd.DataFrame({"user_idx": cold_rows["user_idx"].to_numpy(),
                         "history": [keep_history(h) for h in cold_rows["history"]],
                         "target_item_id": items["item_id"].to_numpy()[cold_rows["target"].to_numpy()]})
    kept_items = items[~is_held].copy()
    kept_items["item_idx"] = np.arange(len(kept_items), dtype=items["item_idx"].dtype)
    cold_items = items[is_held].drop(columns=["item_idx", "cold_start"], errors="ignore")

    manifest = dict(dataset.manifest)
    manifest["counts"] = {**manifest.get("counts", {}), "items": int(len(kept_items)),
                          "interactions": int(len(inter))}
    manifest["cold_start"] = {"source": str(Path(data_dir).resolve()), "fraction": fraction, "seed": seed,
                              "held_out_items": int(count), "cold_examples": int(len(cold)),
                              "removed_interactions": int(len(dataset.interactions) - len(inter))}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        inter.to_parquet(tmp / "interactions.parquet", index=False)
        kept_items.to_parquet(tmp / "items.parquet", index=False)
        dataset.users.to_parquet(tmp / "users.parquet", index=False)
        split_examples(valid).to_parquet(tmp / "valid.parquet", index=False)
        split_examples(test).to_parquet(tmp / "test.parquet", index=False)
        cold.to_parquet(tmp / "cold.parquet", index=False)
        cold_items.to_parquet(tmp / "cold_items.parquet", index=False)
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest["cold_start"]
