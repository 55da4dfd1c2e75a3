"""Prefix cache for `causal`: prefill time of a returning user's prompt whose history grew by one
item, with the earlier prompt's KV cached vs a full prefill, and identical results; for one
request at a time and for batches of returning users (the engine prefills a batch's cache hits
together, as it prefills a batch's full prompts together without the cache).

    python benchmarks/prefix_cache.py [--run RUN] [--history 50] [--users 200] [--batches 1,8]
                                      [--threads 1] [--compile]

Without --run: the bundled causal size (4 x 128, GQA) at random init over ML-100K semantic IDs,
with max_history large enough that a grown history extends the previous prompt (with a full
window the oldest item drops out and the prompt no longer starts the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import ml100k_with_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--batches", default="1,8", help="requests per prefill, comma-separated")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default; genrec serve's workers use 1 each)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both prefills, as `genrec serve --compile`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from genrec.runtime import tune_allocator
    from genrec.serving.prefix_cache import PrefixCache
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig
    from genrec.training.run import load_run

    tune_allocator()
    if args.run:
        loaded = load_run(args.run)
    else:
        loaded = _random_causal(ml100k_with_ids(args.out), args.out, max_history=args.history + 1)
    if loaded.config.max_history <= args.history:
        raise SystemExit(f"the run's max_history ({loaded.config.max_history}) must exceed --history")
    inter = loaded.dataset.interactions.sort_values(["user_idx", "position"])
    per_user = [list(g) for _, g in inter.groupby("user_idx")["item_idx"] if len(g) > args.history][: args.users]
    plain = ModelRunner(loaded, RunnerConfig())   # first: the cached runner compiles the shared model
    cached = ModelRunner(loaded, RunnerConfig(prefix_cache_blocks=100_000, compile=args.compile))
    model, data = loaded.model, loaded.data
    result = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "model": f"causal {'from ' + str(args.run) if args.run else 'random init, bundled size'}",
              "compiled": args.compile,
              "history_items": args.history, "prompt_tokens": int(len(data.prompt(0, per_user[0][: args.history + 1]))),
              "users": len(per_user), "block_size": cached.prefix_cache.block_size, "by_batch": {}}
    for batch in map(int, args.batches.split(",")):
        cached.prefix_cache = PrefixCache(cached.prefix_cache.block_size, 100_000)   # every batch size from cold
        full, reuse, identical = [], [], 0
        with torch.no_grad():
            for first in range(0, len(per_user) - batch + 1, batch):
                users = range(first, first + batch)
                before = [Request(u, per_user[u][: args.history]) for u in users]
                after = [Request(u, per_user[u][: args.history + 1], exclude=per_user[u][: args.history + 1])
                         for u in users]
                cached.prefill(before)                                  # the users' earlier visits
                ids, mask = data.prompt_batch(list(users), [r.history for r in after])
                start = time.perf_counter()
                model.extend(ids, mask if batch > 1 else None)           # the prefill without the cache
                full.append(time.perf_counter() - start)
                start = time.perf_counter()
                cached.prefill(after)
                reuse.append(time.perf_counter() - start)
                for a, b in zip(cached.run(after), plain.run(after)):
                    identical += int(list(a[0]) == list(b[0]))
        result["by_batch"][batch] = {
            "prefill_ms_full_median": round(1000 * statistics.median(full), 2),
            "prefill_ms_cached_median": round(1000 * statistics.median(reuse), 2),
            "speedup": round(statistics.median(full) / statistics.median(reuse), 2),
            "top10_identical_fraction": identical / (len(full) * batch)}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"prefix_cache-{torch.get_num_threads()}threads{'-compiled' if args.compile else ''}.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _random_causal(data_dir: Path, out: Path, max_history: int):
    """A causal run dir at random init (bundled size), for timing only."""
    from genrec.training.config import TrainConfig
    from genrec.training.loop import train

    run = out / "runs" / f"causal-random-h{max_history}"
    if not (run / "config.json").exists():
        config = TrainConfig.from_toml("causal-ml100k")
        config.max_history, config.max_steps, config.eval_every, config.eval_users = max_history, 1, 1, 8
        train(data_dir, run, config, log=lambda _: None)
    from genrec.training.run import load_run

    return load_run(run)


if __name__ == "__main__":
    main()
