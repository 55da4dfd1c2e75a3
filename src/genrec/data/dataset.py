"""Read a prepared dataset directory (what `genrec data prepare` wrote)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.data.prepare import SCHEMA_VERSION
from genrec.errors import GenrecError


@dataclass
class Dataset:
    path: Path
    manifest: dict
    items: pd.DataFrame         # item_idx, item_id, title, text, cold_start, ...
    users: pd.DataFrame         # user_idx, user_id, features...
    interactions: pd.DataFrame  # user_idx, item_idx, timestamp, position, split, (rating)

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_users(self) -> int:
        return len(self.users)

    def examples(self, split: str) -> pd.DataFrame:
        """Evaluation examples of `split`: user_idx, history, target. "valid" and "test", and in
        a cold-start copy (`genrec data cold-start`) "cold": test targets no model trained on."""
        if split not in ("valid", "test", "cold"):
            raise GenrecError(f"unknown split {split!r} (expected valid, test or cold)")
        if split != "cold":
            return pd.read_parquet(self.path / f"{split}.parquet")
        if not (self.path / "cold.parquet").exists():
            raise GenrecError(f"{self.path} has no cold split; make one with `genrec data cold-start`")
        cold = pd.read_parquet(self.path / "cold.parquet")
        index = dict(zip(self.items["item_id"].astype(str), self.items["item_idx"]))
        missing = [i for i in cold["target_item_id"].astype(str) if i not in index]
        if missing:
            raise GenrecError(f"{self.path}: the held-out items have no semantic IDs yet; run `genrec ids add "
                              f"--data {self.path} --items {self.path / 'cold_items.parquet'}`")
        cold["target"] = [index[i] for i in cold["target_item_id"].astype(str)]
        return cold[["user_idx", "history", "target"]]

    def train_sequences(self) -> list[np.ndarray]:
        """Each user's training items in time order (index = user_idx)."""
        train = self.interactions[self.interactions["split"] == "train"]
        grouped = train.groupby("user_idx", sort=True)["item_idx"]
        return [g.to_numpy(np.int32) for _, g in grouped]


def load_dataset(path: str | Path) -> Dataset:
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise GenrecError(f"{path} is not a prepared dataset (no manifest.json); run `genrec data prepare`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise GenrecError(f"{path}: dataset schema version {manifest.get('schema_version')} is not "
                          f"{SCHEMA_VERSION}; prepare it again with this genrec")
    return Dataset(path=path, manifest=manifest,
                   items=pd.read_parquet(path / "items.parquet"),
                   users=pd.read_parquet(path / "users.parquet"),
                   interactions=pd.read_parquet(path / "interactions.parquet"))
