"""The engine's throughput within a latency budget, without HTTP: Poisson arrivals submitted in
process to `Engine` (its queue, admission control, deadlines and workers, here worker processes
as `genrec serve` runs them on a CPU) at rising rates; per rate the answered requests/s and the
p50/p99 latency from submission to answer. Then `transformers` generate on the same weights and
requests, with the engine gone, and the ratio of the engine's best rate within p99 <= budget to
the baseline's best batch size. The load generator is one thread of this process (it sleeps
between arrivals), so the workers have the cores to themselves. With --concurrency, closed loop
too: that many clients (threads of this process), each submitting its next request when its
last is answered.

    python benchmarks/engine_open_loop.py --run RUN [--bf16] [--compile] [--rates 50,100,150,200]
        [--concurrency 8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
from pathlib import Path

import torch

from genrec.runtime import matmul_peak_flops, tune_allocator, usable_bf16
from genrec.serving.bench import bf16_overlap, flops_per_request, hf_baseline
from genrec.serving.engine import Engine, EngineConfig, Overloaded
from genrec.serving.history import dataset_histories, user_index
from genrec.serving.runner import Request, RunnerConfig
from genrec.serving.workers import ProcessRunner
from genrec.training.run import load_run


def offer(engine: Engine, requests: list[Request], rate: float, seconds: float, rng: random.Random) -> dict:
    """Submit at Poisson arrivals for `seconds`, wait for every answer; latency from submission."""
    latencies, refused, futures = [], 0, []
    start = next_arrival = time.monotonic()
    while next_arrival < start + seconds:
        time.sleep(max(0.0, next_arrival - time.monotonic()))
        submitted = time.monotonic()
        try:
            future = engine.submit(rng.choice(requests))
            future.add_done_callback(lambda f, t=submitted: latencies.append((time.monotonic() - t, f.exception())))
            futures.append(future)
        except Overloaded:
            refused += 1
        next_arrival += rng.expovariate(rate)
    for future in futures:
        try:
            future.result(timeout=60)
        except Exception:
            pass
    ok = [t for t, exc in latencies if exc is None]
    return {"offered_req_per_s": rate, "refused_429": refused, "failed_503": len(latencies) - len(ok),
            **answered(ok, time.monotonic() - start)}


def answered(latencies: list[float], elapsed: float) -> dict:
    """Count, rate and p50/p99 (ms) of answered requests' latencies (seconds)."""
    ok = sorted(latencies)
    return {"answered": len(ok), "throughput_req_per_s": round(len(ok) / elapsed, 1),
            "p50_ms": round(1000 * ok[len(ok) // 2], 1) if ok else None,
            "p99_ms": round(1000 * ok[min(len(ok) - 1, int(0.99 * len(ok)))], 1) if ok else None}


def closed(engine: Engine, requests: list[Request], clients: int, seconds: float, seed: int) -> dict:
    """`clients` threads, each with one request in flight at a time, for `seconds`."""
    latencies, failed = [], []
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < stop:
            submitted = time.monotonic()
            try:
                engine.submit(rng.choice(requests)).result(timeout=60)
                latencies.append(time.monotonic() - submitted)
            except Exception as error:   # Overloaded or a failed batch: counted, never expected here
                failed.append(repr(error))

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"concurrency": clients, "failed": len(failed), **answered(latencies, time.monotonic() - start)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rates", default="50,100,150,200,250")
    parser.add_argument("--concurrency", default="", help="closed-loop levels (clients), e.g. 8,16")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--hf-batch-sizes", default="1,4,8,16,32")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.bf16 = usable_bf16(args.bf16)   # fp32 where bf16 has no kernels (an AVX2-only CPU)
    tune_allocator()
    loaded = load_run(args.run)
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    users = sorted(histories)
    requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in users]
    started = time.monotonic()
    runner = ProcessRunner(loaded, RunnerConfig(bf16=args.bf16, compile=args.compile), args.workers,
                           args.threads_per_worker)
    for size in (1, 2, 3, args.max_batch):      # first batches of each size warm the caches
        for lo in range(0, 2 * args.workers * size, size):
            runner.run(requests[lo:lo + size])
    print(f"workers ready in {time.monotonic() - started:.0f} s", flush=True)
    engine = Engine(runner, EngineConfig(max_batch=args.max_batch, workers=args.workers, deadline_ms=1000)).start()
    rng, levels = random.Random(0), []
    try:
        for rate in (float(r) for r in args.rates.split(",") if r.strip()):
            levels.append(offer(engine, requests, rate, args.seconds, rng))
            print(json.dumps(levels[-1]), flush=True)
            time.sleep(1.0)   # the queue empties between levels
        for clients in (int(c) for c in args.concurrency.split(",") if c.strip()):
            levels.append(closed(engine, requests, clients, args.seconds, seed=clients))
            print(json.dumps(levels[-1]), flush=True)
            time.sleep(1.0)
    finally:
        engine.stop()
        runner.close()
    within = [lv for lv in levels if lv["p99_ms"] is not None and lv["p99_ms"] <= args.budget_ms
              and not lv.get("refused_429") and not lv.get("failed_503") and not lv.get("failed")]
    best = max(within, key=lambda lv: lv["throughput_req_per_s"], default=None)

    torch.set_num_threads(os.cpu_count() or 1)
    baseline = hf_baseline(loaded, users[:64], histories, index, [int(b) for b in args.hf_batch_sizes.split(",")])
    hf_best = max(baseline.values())
    flops = flops_per_request(loaded.model, loaded.table.depth, 20, 1 + loaded.config.max_history * loaded.table.depth)
    peak = matmul_peak_flops(dtype=torch.bfloat16 if args.bf16 else torch.float32)
    result = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "run": str(args.run),
              "bf16": args.bf16, "compile": args.compile, "workers": args.workers,
              "threads_per_worker": args.threads_per_worker, "max_batch": args.max_batch, "beam": 20, "k": 10,
              "history_items": loaded.config.max_history, "levels": levels, "latency_budget_ms": args.budget_ms,
              "best_within_budget": best, "hf_generate_req_per_s": baseline, "hf_best_req_per_s": hf_best,
              "speedup_within_budget": round(best["throughput_req_per_s"] / hf_best, 2) if best else None,
              "gflops_per_request": round(flops / 1e9, 3), "matmul_peak_gflops": round(peak / 1e9, 1),
              "mfu_within_budget": round(best["throughput_req_per_s"] * flops / peak, 3) if best else None}
    if args.bf16:
        result["bf16_top10_overlap_vs_fp32"] = bf16_overlap(loaded, users[:200], histories, index, args.compile)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine_open_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "levels"}))


if __name__ == "__main__":
    main()
