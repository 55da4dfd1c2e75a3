"""Offline batch inference (`genrec recommend --users all --out recs.parquet`) through the
serving engine, so offline and online lists are the same by construction."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from genrec.serving.engine import Engine, EngineConfig
from genrec.serving.history import dataset_histories, user_index
from genrec.serving.runner import ModelRunner, Request, RunnerConfig


def recommend_users(loaded, user_ids: list[str] | None, k: int, out: Path, runner_config: RunnerConfig,
                    max_batch: int = 128, exclude_history: bool = True, progress: bool = True) -> pd.DataFrame:
    """Top-k for each user (all users of the dataset when user_ids is None), written to `out` as
    Parquet rows (user_id, rank, item_id, score, title)."""
    histories = dataset_histories(loaded.dataset)
    index = user_index(loaded.dataset)
    users = list(index) if user_ids is None else [str(u) for u in user_ids]
    unknown = [u for u in users if u not in index]
    if unknown:
        raise ValueError(f"unknown user ids: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    engine = Engine(ModelRunner(loaded, runner_config),
                    EngineConfig(max_batch=max_batch, max_queue=len(users) + 1, deadline_ms=1e9))
    futures = []
    try:
        for user in users:   # all queued before the engine starts, so every batch is full
            history = histories.get(user, [])
            futures.append(engine.submit(Request(index[user], history, k,
                                                 exclude=history if exclude_history else None)))
        engine.start()
        items = loaded.dataset.items
        ids, titles = items["item_id"].astype(str).to_numpy(), items["title"].astype(str).to_numpy()
        rows = []
        for user, future in tqdm(zip(users, futures), total=len(users), desc="recommend", unit="user",
                                 disable=not progress):
            found, scores = future.result()
            rows += [(user, rank, ids[i], float(s), titles[i]) for rank, (i, s) in enumerate(zip(found, scores), 1)]
    finally:
        engine.stop(drain=False)
    frame = pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "title"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.parquet")
    frame.to_parquet(tmp, index=False)
    tmp.replace(out)
    return frame
