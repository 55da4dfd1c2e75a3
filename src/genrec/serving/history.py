"""Users' histories for serving: the dataset's interactions plus events posted to the service,
kept in SQLite so they survive a restart.

The dataset histories and every stored event are held in memory (ML-100K: 100k events, a few MB).
A posted event is committed to SQLite before its request returns. Each read first takes the
events committed since the last one, by this process or by any other on the same file (the
processes of `genrec serve --http-processes`): one query on the primary key, a few µs when
there are none.
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
        self._seen = 0   # the last event (seq) in self._histories
        self._catch_up()

    def _catch_up(self) -> None:
        """Take the events committed since the last call, whoever wrote them (under the lock)."""
        for seq, user_id, item_idx in self._db.execute(
                "SELECT seq, user_id, item_idx FROM events WHERE seq > ? ORDER BY seq", (self._seen,)):
            self._histories.setdefault(user_id, []).append(int(item_idx))
            self._seen = seq

    def history(self, user_id: str) -> list[int]:
        """Item indices, oldest first; empty for a user never seen."""
        with self._lock:
            self._catch_up()
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
            self._catch_up()   # ours, and any other process's committed before them, in order

    def close(self) -> None:
        with self._lock:
            self._db.close()
