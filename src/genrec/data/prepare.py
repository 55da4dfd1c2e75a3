"""Shared preparation: filters with an accounted reason for every dropped row, chronological
leave-one-out splits, and the on-disk dataset (Parquet + manifest.json).

Protocol (the one TIGER, SASRec and HSTU use): optional rating threshold and k-core filter; each
user's events ordered by time with ties broken by source order; the last event is the test
target, the second-to-last the validation target, the rest are training. Histories are truncated
to the last `max_history` items when examples are built.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec import __version__
from genrec.data.raw import RawDataset
from genrec.errors import GenrecError
from genrec.files import atomic_directory, atomic_write_json

SCHEMA_VERSION = 1
MIN_EVENTS_FOR_LOO = 3  # train needs >= 1 event, plus one each for valid and test


@dataclass
class PrepareConfig:
    kcore: int = 0                  # 0 = off; k >= 1 keeps users and items with >= k events
    min_rating: float | None = None  # keep events rated >= this (None keeps all)
    max_history: int = 50           # items of history fed to models
    dedupe: bool = True             # drop exact repeats of (user, item, timestamp)

    def __post_init__(self):
        if self.kcore < 0:
            raise GenrecError(f"--kcore must be >= 0, got {self.kcore}")
        if self.max_history < 1:
            raise GenrecError(f"--max-history must be >= 1, got {self.max_history}")


def _natural_order(ids: np.ndarray) -> np.ndarray:
    """Sort key: numeric ids by value (so MovieLens user 2 precedes 10), others as text."""
    try:
        numbers = np.array([int(x) for x in ids], dtype=np.int64)
        return np.argsort(numbers, kind="stable")
    except ValueError:
        return np.argsort(ids.astype(str), kind="stable")


def _kcore(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of events that survive iterated k-core filtering on integer codes."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        u_count = np.bincount(users[keep], minlength=users.max() + 1 if len(users) else 0)
        i_count = np.bincount(items[keep], minlength=items.max() + 1 if len(items) else 0)
        bad = keep & ((u_count[users] < k) | (i_count[items] < k))
        if not bad.any():
            return keep
        keep &= ~bad


def prepare(raw: RawDataset, config: PrepareConfig, out: str | Path, overwrite: bool = False) -> dict:
    """Filter, index, split and write `raw` to `out`; returns the manifest."""
    started = time.time()
    n_source = raw.source_rows
    dropped: dict[str, int] = dict(raw.dropped)
    keep = np.ones(len(raw.user_ids), dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        newly = keep & mask
        if newly.any():
            dropped[reason] = dropped.get(reason, 0) + int(newly.sum())
            keep[newly] = False

    if config.min_rating is not None:
        if raw.ratings is None:
            raise GenrecError("--min-rating was given but the data has no rating column")
        drop(raw.ratings < config.min_rating, f"rating below {config.min_rating:g}")

    known_items = set(raw.items["item_id"])
    drop(~np.fromiter((i in known_items for i in raw.item_ids), bool, len(raw.item_ids)),
         "item not in the items table")

    user_codes, user_uniques = pd.factorize(raw.user_ids)
    item_codes, item_uniques = pd.factorize(raw.item_ids)
    if config.dedupe:
        frame = pd.DataFrame({"u": user_codes, "i": item_codes, "t": raw.timestamps})
        drop(frame.duplicated(keep="first").to_numpy(), "duplicate (same user, item and timestamp)")

    if config.kcore > 0:
        survivors = np.zeros_like(keep)
        idx = np.flatnonzero(keep)
        survivors[idx[_kcore(user_codes[idx], item_codes[idx], config.kcore)]] = True
        drop(~survivors, f"k-core filter (k={config.kcore})")

    counts = np.bincount(user_codes[keep], minlength=len(user_uniques))
    drop(counts[user_codes] < MIN_EVENTS_FOR_LOO,
         f"user has fewer than {MIN_EVENTS_FOR_LOO} events (leave-one-out needs train, valid and test)")

    n_kept = int(keep.sum())
    if n_kept == 0:
        raise GenrecError("no interactions left after filtering: " +
                          ", ".join(f"{r}: {n}" for r, n in dropped.items()))
    assert n_kept + sum(dropped.values()) == n_source, "every source row must be accounted for"

    # Dense indices: users and items in natural id order, restricted to what survived.
    rows = np.flatnonzero(keep)
    kept_users = pd.unique(raw.user_ids[rows])
    kept_users = kept_users[_natural_order(kept_users)]
    user_index = pd.Index(kept_users)
    kept_items_set = set(raw.item_ids[rows])
    items = raw.items[raw.items["item_id"].isin(kept_items_set)]
    items = items.iloc[_natural_order(items["item_id"].to_numpy())].reset_index(drop=True)
    item_index = pd.Index(items["item_id"])

    events = pd.DataFrame({
        "user_idx": user_index.get_indexer(raw.user_ids[rows]).astype(np.int32),
        "item_idx": item_index.get_indexer(raw.item_ids[rows]).astype(np.int32),
        "timestamp": raw.timestamps[rows],
        "source_row": rows.astype(np.int64),
    })
    if raw.ratings is not None:
        events["rating"] = raw.ratings[rows].astype(np.float32)
    events = split_leave_one_out(events)

    items.insert(0, "item_idx", np.arange(len(items), dtype=np.int32))
    items["cold_start"] = False
    users = pd.DataFrame({"user_idx": np.arange(len(user_index), dtype=np.int32),
                          "user_id": user_index.to_numpy().astype(str)})
    user_features: list[str] = []
    if raw.users is not None:
        features = raw.users.drop_duplicates("user_id").set_index("user_id")
        user_features = [c for c in features.columns]
        users = users.join(features, on="user_id")

    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": raw.name,
        "created_unix": int(started),
        "genrec_version": __version__,
        "python": platform.python_version(),
        "sources": raw.sources,
        "protocol": {
            **asdict(config),
            "order": "by timestamp, ties broken by source row order (stable)",
            "split": "leave-one-out: last event = test, second-to-last = valid, rest = train",
            "ranking": "full ranking against all items",
            "min_events_per_user": MIN_EVENTS_FOR_LOO,
        },
        "counts": {
            "source_rows": n_source,
            "kept_rows": n_kept,
            "dropped_rows": int(sum(dropped.values())),
            "dropped_by_reason": dropped,
            "users": len(users),
            "items": len(items),
            "items_without_kept_events": int(len(raw.items) - len(items)),
            "train_events": int((events["split"] == "train").sum()),
            "valid_events": int((events["split"] == "valid").sum()),
            "test_events": int((events["split"] == "test").sum()),
        },
        "user_features": user_features,
        "item_columns": [c for c in items.columns],
        "files": ["interactions.parquet", "items.parquet", "users.parquet", "valid.parquet",
                  "test.parquet"],
    }
    with atomic_directory(out, overwrite=overwrite) as tmp:
        events.drop(columns=["source_row"]).to_parquet(tmp / "interactions.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
        users.to_parquet(tmp / "users.parquet", index=False)
        for split in ("valid", "test"):
            eval_examples(events, split, config.max_history).to_parquet(tmp / f"{split}.parquet", index=False)
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


def split_leave_one_out(events: pd.DataFrame) -> pd.DataFrame:
    """Order events per user by (timestamp, source_row) and label train/valid/test.

    `events` needs user_idx, timestamp and source_row; every user must have >= 3 events.
    """
    events = events.sort_values(["user_idx", "timestamp", "source_row"], kind="stable").reset_index(drop=True)
    position = events.groupby("user_idx").cumcount().to_numpy()
    length = events.groupby("user_idx")["user_idx"].transform("size").to_numpy()
    if (length < MIN_EVENTS_FOR_LOO).any():
        raise ValueError("leave-one-out needs at least 3 events per user")
    split = np.full(len(events), "train", dtype=object)
    split[position == length - 2] = "valid"
    split[position == length - 1] = "test"
    events["position"] = position.astype(np.int32)
    events["split"] = pd.Categorical(split, categories=["train", "valid", "test"])
    return events


def eval_examples(events: pd.DataFrame, split: str, max_history: int) -> pd.DataFrame:
    """One row per user: the `split` target and the (truncated) history of events before it."""
    assert split in ("valid", "test")
    allowed = ("train",) if split == "valid" else ("train", "valid")
    history = events[events["split"].isin(allowed)].groupby("user_idx", sort=True)["item_idx"].agg(
        lambda s: s.to_numpy()[-max_history:].astype(np.int32))
    targets = events[events["split"] == split].set_index("user_idx")["item_idx"]
    frame = pd.DataFrame({"user_idx": targets.index.to_numpy().astype(np.int32),
                          "history": [history[u] for u in targets.index],
                          "target": targets.to_numpy().astype(np.int32)})
    return frame.sort_values("user_idx").reset_index(drop=True)
