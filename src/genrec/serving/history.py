"""Users' histories for serving: the dataset's interactions plus events posted to the service,
kept in SQLite so they survive a restart.

Reads never touch the database: the dataset histories and every stored event are loaded into
memory at start (ML-100K: 100k events, a few MB) and each posted event is written to SQLite
(committed before the request returns) and appended in memory.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_idx INTEGER NOT NULL,
    timestamp REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user ON events (user_id, seq);
"""


def user_index(dataset) -> dict[str, int]:
    """user id -> user_idx (the model's user token comes from the index)."""
    return {u: i for i, u in enumerate(dataset.users["user_id"].astype(str))}


def dataset_histories(dataset) -> dict[str, list[int]]:
    """user id -> item indices of all their interactions, oldest first (what `genrec recommend
    --user` reads)."""
    users = dataset.users["user_id"].astype(str).to_numpy()
    inter = dataset.interactions.sort_values(["user_idx", "position"], kind="stable")
    return {users[u]: list(map(int, items)) for u, items in inter.groupby("user_idx", sort=True)["item_idx"]}


class HistoryStore:
    def __init__(self, dataset, path: str | Path):
        """dataset: the run's `Dataset` (its interactions, in time order, seed every history)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")   # readers never block the writer
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes, WAL-safe
        self._db.executescript(SCHEMA)
        self.user_index = user_index(dataset)
        self._histories = dataset_histories(dataset)
        for user_id, item_idx in self._db.execute("SELECT user_id, item_idx FROM events ORDER BY seq"):
            self._histories.setdefault(user_id, []).append(int(item_idx))

    def known(self, user_id: str) -> bool:
        return user_id in self._histories

    def history(self, user_id: str) -> list[int]:
        """Item indices, oldest first; empty for a user never seen."""
        with self._lock:
            return list(self._histories.get(user_id, ()))

    def append(self, user_id: str, items: list[int], timestamp: float | None = None) -> None:
        if not items:
            return
        ts = time.time() if timestamp is None else float(timestamp)
        with self._lock:
            with self._db:  # one transaction: all of the request's events or none
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO events (user_id, item_idx, timestamp) VALUES (?, ?, ?)",
                                     [(user_id, int(i), ts) for i in items])
            self._histories.setdefault(user_id, []).extend(int(i) for i in items)

    def close(self) -> None:
        with self._lock:
            self._db.close()
