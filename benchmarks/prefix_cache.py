"""Prefix cache for `causal`: prefill time of a returning user's prompt whose history grew by one
item, with the earlier prompt's KV cached vs a full prefill, and identical results; for one
request at a time and for batches of returning users (the engine prefills a batch's cache hits
together, as it prefills a batch's full prompts together without the cache).

    python benchmarks/prefix_cache.py [--run RUN] [--history 50] [--users 200] [--batches 1,8]
                                      [--threads 1] [--compile]
    python benchmarks/prefix_cache.py --replay [--run RUN] [--strides 1,16] [--visits 32] [--users 50]

Without --run: the bundled causal size (4 x 128, GQA) at random init over ML-100K semantic IDs,
with max_history large enough that a grown history extends the previous prompt (with a full
window the oldest item drops out and the prompt no longer starts the same way).

--replay: returning users whose histories already fill the window (most ML-100K users), each
visiting `--visits` times with one more item each time, per `window_stride`: the share of visits
that hit the cache, the prefill time per visit, and identical results with and without the cache
at the same stride; with --run, also Recall@10 / NDCG@10 on valid and test per stride (whole
histories, cut where the stride puts the window). Without --run: the bundled causal size at
random init, max_history 50 (timings only).
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
    parser.add_argument("--block-size", type=int, default=0,
                        help="tokens per cached block (0: RunnerConfig's default, as genrec serve)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default; genrec serve's workers use 1 each)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both prefills, as `genrec serve --compile`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--replay", action="store_true", help="full windows: visits per window_stride")
    parser.add_argument("--strides", default="1,16")
    parser.add_argument("--visits", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from genrec.runtime import tune_allocator
    from genrec.serving.prefix_cache import PrefixCache
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig
    from genrec.training.run import load_run

    tune_allocator()
    if args.replay:
        loaded = load_run(args.run) if args.run else _random_causal(ml100k_with_ids(args.out), args.out, 50)
        return replay(loaded, [int(x) for x in args.strides.split(",")], args.visits, args.users, args.out,
                      trained=args.run is not None)
    if args.run:
        loaded = load_run(args.run)
    else:
        loaded = _random_causal(ml100k_with_ids(args.out), args.out, max_history=args.history + 1)
    if loaded.config.max_history <= args.history:
        raise SystemExit(f"the run's max_history ({loaded.config.max_history}) must exceed --history")
    inter = loaded.dataset.interactions.sort_values(["user_idx", "position"])
    per_user = [list(g) for _, g in inter.groupby("user_idx")["item_idx"] if len(g) > args.history][: args.users]
    # a model of its own: --compile compiles the cached runner's model in place, for the cache's paths only
    plain = ModelRunner(load_run(loaded.path), RunnerConfig())
    cached = ModelRunner(loaded, RunnerConfig(prefix_cache_blocks=100_000, compile=args.compile,
                                              prefix_block_size=args.block_size or RunnerConfig().prefix_block_size))
    data = loaded.data
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
                prompts = [data.prompt(r.user_idx, r.history) for r in after]
                start = time.perf_counter()
                cached._extend(prompts, [None] * batch)   # the prefill without the cache: the engine's misses
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


def window_quality(loaded, strides: list[int]) -> dict:
    """Recall@10 and NDCG@10 on valid and test with each user's whole history before the target
    (the stored examples keep only the last max_history items), through the serving runner at each
    stride: the window cut where the stride puts its start, the items cut off still excluded."""
    from genrec.evaluation.metrics import ranking_metrics
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig

    inter = loaded.dataset.interactions.sort_values(["user_idx", "position"])
    quality = {}
    for split, before in (("valid", ("train",)), ("test", ("train", "valid"))):
        examples = loaded.dataset.examples(split)
        seen = inter[inter["split"].isin(before)].groupby("user_idx")["item_idx"].apply(list)
        requests = [Request(u, seen[u], k=10, exclude=seen[u]) for u in examples["user_idx"]]
        for stride in strides:
            runner = ModelRunner(loaded, RunnerConfig(window_stride=stride))
            found = [items for lo in range(0, len(requests), 64) for items, _ in runner.run(requests[lo:lo + 64])]
            ranks = [list(items).index(target) if target in items else np.inf   # 0-based
                     for items, target in zip(found, examples["target"])]
            metrics = ranking_metrics(np.array(ranks), ks=(10,))
            quality[f"{split} stride {stride}"] = {name: round(metrics[name], 4) for name in ("recall@10", "ndcg@10")}
            print(json.dumps({f"{split} stride {stride}": quality[f"{split} stride {stride}"]}), flush=True)
    return quality


def replay(loaded, strides: list[int], visits: int, max_users: int, out: Path, trained: bool) -> None:
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig

    limit = loaded.config.max_history
    inter = loaded.dataset.interactions.sort_values(["user_idx", "position"])
    seqs = [list(g) for _, g in inter.groupby("user_idx")["item_idx"] if len(g) >= limit + visits][:max_users]
    result = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
              "max_history": limit, "users": len(seqs), "visits_per_user": visits, "by_stride": {}}
    for stride in strides:
        cached = ModelRunner(loaded, RunnerConfig(prefix_cache_blocks=100_000, window_stride=stride))
        plain = ModelRunner(loaded, RunnerConfig(window_stride=stride))
        cache, times, hits, reused, tokens, identical, checked = cached.prefix_cache, [], 0, 0, 0, 0, 0
        with torch.no_grad():
            for user, seq in enumerate(seqs):
                cached.prefill([Request(user, seq[:limit])])     # the visit before: a full window
                for n in range(limit + 1, limit + visits + 1):
                    request = Request(user, seq[:n], exclude=seq[:n])
                    counted = cache.hits, cache.hit_tokens
                    start = time.perf_counter()
                    cached.prefill([request])
                    times.append(time.perf_counter() - start)
                    hits, reused = hits + cache.hits - counted[0], reused + cache.hit_tokens - counted[1]
                    tokens += len(loaded.data.prompt(user, cached.windowed([request])[0].history))
                    if n % 8 == 0:    # results against the runner without the cache, same window
                        checked += 1
                        identical += int(list(cached.run([request])[0][0]) == list(plain.run([request])[0][0]))
        result["by_stride"][stride] = {
            "window_items": f"{limit - stride + 1}..{limit}", "visits_hitting_cache": round(hits / len(times), 3),
            "prompt_tokens_from_cache": round(reused / tokens, 3),
            "prefill_ms_median": round(1000 * statistics.median(times), 2),
            "prefill_ms_mean": round(1000 * statistics.mean(times), 2),
            "top10_identical_fraction": identical / max(1, checked)}
        print(json.dumps({stride: result["by_stride"][stride]}), flush=True)
    if trained:
        result["quality"] = window_quality(loaded, strides)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix_cache_replay.json").write_text(json.dumps(result, indent=2) + "\n")
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
