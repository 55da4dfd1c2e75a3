"""The in-memory form every loader produces before the shared preparation steps run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class RawDataset:
    """Interactions, item text and optional user features, as read from the source files.

    `dropped` counts source rows the loader already had to drop, by reason (e.g. an Amazon review
    whose item has no metadata), so that the manifest can account for every source row.
    """

    name: str
    user_ids: np.ndarray        # object array of str, one per interaction
    item_ids: np.ndarray        # object array of str
    timestamps: np.ndarray      # float64 seconds
    items: pd.DataFrame         # item_id (str), title (str), text (str), any extra columns
    users: pd.DataFrame | None = None  # user_id (str) + feature columns
    ratings: np.ndarray | None = None
    source_rows: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)  # [{"path", "sha256", "rows"}]

    def __post_init__(self):
        n = len(self.user_ids)
        if not (len(self.item_ids) == len(self.timestamps) == n):
            raise ValueError("user_ids, item_ids and timestamps must have the same length")
        if self.ratings is not None and len(self.ratings) != n:
            raise ValueError("ratings must have one value per interaction")
        for column in ("item_id", "title", "text"):
            if column not in self.items.columns:
                raise ValueError(f"items frame lacks column {column!r}")
        if self.items["item_id"].duplicated().any():
            dup = self.items.loc[self.items["item_id"].duplicated(), "item_id"].iloc[0]
            raise ValueError(f"item {dup!r} appears twice in the items table")
        if not self.source_rows:
            self.source_rows = n + sum(self.dropped.values())
