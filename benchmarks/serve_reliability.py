"""Reliability of `genrec serve` on loopback, each phase bounded and self-stopping:

1. 10,000 requests at concurrency 64: zero 5xx, every request answered exactly once (each asks
   for a 60 s deadline: this phase checks answers under concurrency, not admission, and at the
   default 1 s a server slower than ~64 req/s -- eager fp32 on an AVX2 CPU -- refuses most of a
   burst of 64, which is phase 2's check);
2. offered load at 3x the measured capacity: excess refused with 429/503 + Retry-After, the
   admitted ones within their deadline; then light load again: all answered (recovery);
3. a soak at moderate load: server RSS growth after warm-up.

    python benchmarks/serve_reliability.py --run RUN [--soak-minutes 10] [--bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

from genrec.serving import loadgen
from genrec.serving.bench import _free_port, _wait_healthy, child_pids, start_server

BURST_DEADLINE_MS = 60_000   # the API's maximum

def rss_mb(pid: int) -> float:
    """Resident memory of the server and its descendants (the worker processes hold the models)."""
    total = 0.0
    for proc in [pid, *_descendants(pid)]:
        for line in Path(f"/proc/{proc}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def _descendants(pid: int) -> list[int]:
    return [d for child in child_pids(pid) for d in (child, *_descendants(child))]


async def exactly_n(port: int, bodies: list[bytes], n: int, concurrency: int) -> dict:
    """n requests, each sent once, `concurrency` at a time; counts every outcome."""
    result = loadgen.PhaseResult("closed", concurrency, 0.0)
    pool, counter = loadgen._Pool(port), iter(range(n))
    start = time.perf_counter()

    async def worker():
        for i in counter:
            await loadgen._one(pool, bodies[i % len(bodies)], result, BURST_DEADLINE_MS / 1000 + 30)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - start
    pool.close()
    summary = result.summary()
    summary["answered"] = sum(result.statuses.values())
    return summary

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--deadline-ms", type=float, default=1000.0)   # the server's default
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    from genrec.serving.history import dataset_histories
    from genrec.training.run import load_run

    users = sorted(dataset_histories(load_run(args.run).dataset))
    bodies = [json.dumps({"user_id": u, "k": 10}).encode() for u in users]
    burst_bodies = [json.dumps({"user_id": u, "k": 10, "deadline_ms": BURST_DEADLINE_MS}).encode() for u in users]
    port = _free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    server_log = args.out / "reliability.server.log"
    server = start_server(args.run, port, args.out / "reliability-events.sqlite",
                          ["--deadline-ms", str(args.deadline_ms), *(["--bf16"] if args.bf16 else [])], server_log)
    result: dict = {"run": str(args.run), "bf16": args.bf16, "deadline_ms": args.deadline_ms}
    try:
        _wait_healthy(port, server, log_path=server_log)
        burst = asyncio.run(exactly_n(port, burst_bodies, args.requests, 64))
        result["burst"] = {**burst, "deadline_ms": BURST_DEADLINE_MS}
        print("burst:", burst, flush=True)
        capacity = burst["throughput_req_per_s"]
        over = asyncio.run(loadgen.open_loop(port, bodies, 3 * capacity, 10.0)).summary()
        result["overload_3x"] = over
        print("3x overload:", over, flush=True)
        time.sleep(2)
        after = asyncio.run(loadgen.open_loop(port, bodies, max(1.0, capacity / 4), 5.0)).summary()
        result["recovery"] = after
        print("recovery:", after, flush=True)
        samples, stop = [], time.monotonic() + 60 * args.soak_minutes
        soak = loadgen.PhaseResult("closed", 8, 0.0)
        while time.monotonic() < stop:   # 10-second slices, sampling the server's RSS between them
            part = asyncio.run(loadgen.closed_loop(port, bodies, 8, 10.0))
            soak.latencies_ms += part.latencies_ms
            soak.seconds += part.seconds
            soak.errors += part.errors
            for code, count in part.statuses.items():
                soak.statuses[code] = soak.statuses.get(code, 0) + count
            samples.append(rss_mb(server.pid))
        if samples:   # --soak-minutes 0 skips the soak
            warm = samples[min(2, len(samples) - 1)]   # after ~30 s: caches and allocator pools filled
            result["soak"] = {**soak.summary(), "rss_mb_samples": [round(x, 1) for x in samples],
                              "rss_growth_after_warmup": round(samples[-1] / warm - 1, 4)}
            print("soak:", {k: v for k, v in result["soak"].items() if k != "rss_mb_samples"}, flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        result["exit_status_after_sigterm"] = server.wait(60)
    ok = (result["burst"]["answered"] == args.requests and not any(c.startswith("5") for c in result["burst"]["statuses"])
          and result["burst"]["errors"] == 0)
    result["burst_ok"] = ok
    over = result["overload_3x"]
    result["overload_refused_share"] = round(1 - over["ok"] / max(1, sum(over["statuses"].values())), 3)
    # Latency is measured at the client, so it includes the HTTP round trip beyond the engine's deadline.
    result["overload_admitted_max_ms"] = over["max_ms"]
    result["overload_admitted_server_max_ms"] = over["server_max_ms"]
    result["overload_admitted_p99_within_deadline"] = (over["p99_ms"] or 0) <= args.deadline_ms
    result["overload_refusals_all_with_retry_after"] = over["refusals_without_retry_after"] == 0
    result["recovered"] = (result["recovery"]["errors"] == 0
                           and set(result["recovery"]["statuses"]) == {"200"})
    (args.out / ("serve_reliability.json" if "soak" in result else "serve_reliability_nosoak.json")).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("soak",)}, indent=2))
    if "soak" in result:
        print("rss growth after warm-up:", result["soak"]["rss_growth_after_warmup"])

if __name__ == "__main__":
    main()
