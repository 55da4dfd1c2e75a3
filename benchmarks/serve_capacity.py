"""Engine capacity without HTTP: how long one engine step (a batch of requests through the model
runner) takes at each batch size, with 1 or 2 torch threads, and what two single-threaded workers
running batches side by side deliver. This is what sizes `--max-batch`, `--threads` and
`--workers` for a latency budget: a request waits for at most the batch running when it arrives,
then runs in its own, so p99 <= budget needs roughly 2 x step(batch) <= budget.

    python benchmarks/serve_capacity.py --run RUN [--bf16] [--compile] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from genrec.runtime import tune_allocator, usable_bf16
from genrec.serving.history import dataset_histories, user_index
from genrec.serving.runner import ModelRunner, Request, RunnerConfig
from genrec.training.run import load_run


def step_ms(runner: ModelRunner, requests: list[Request], repeats: int) -> float:
    runner.run(requests)  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(requests)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def two_workers(runner: ModelRunner, requests: list[Request], seconds: float) -> float:
    """Requests/s of two threads each running batches back to back (torch threads = 1)."""
    done, stop = [0, 0], time.perf_counter() + seconds

    def work(i):
        while time.perf_counter() < stop:
            runner.run(requests)
            done[i] += len(requests)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--history", type=int, default=20, help="items per history (the last ones)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.bf16 = usable_bf16(args.bf16)   # fp32 where bf16 has no kernels (an AVX2-only CPU)
    tune_allocator()
    loaded = load_run(args.run)
    runner = ModelRunner(loaded, RunnerConfig(bf16=args.bf16, compile=args.compile))
    histories = dataset_histories(loaded.dataset)
    users = sorted(histories)
    index = user_index(loaded.dataset)
    pool = [Request(index[u], histories[u][-args.history:], k=10, exclude=histories[u]) for u in users[:64]]
    batches = [int(b) for b in args.batches.split(",")]
    result = {"run": str(args.run), "bf16": args.bf16, "compile": args.compile, "history": args.history,
              "cpu_threads_available": torch.get_num_threads(), "step_ms": {}, "two_workers_req_per_s": {}}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        rows = {}
        for b in batches:
            ms = step_ms(runner, pool[:b], args.repeats)
            rows[b] = {"ms": round(ms, 2), "req_per_s": round(b / ms * 1000, 1)}
            print(f"threads {threads} batch {b:3d}: {ms:7.2f} ms  {b / ms * 1000:6.1f} req/s", flush=True)
        result["step_ms"][threads] = rows
    torch.set_num_threads(1)
    for b in batches:
        rate = two_workers(runner, pool[:b], seconds=4.0)
        result["two_workers_req_per_s"][b] = round(rate, 1)
        print(f"2 workers x 1 thread, batch {b:3d}: {rate:6.1f} req/s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_capacity.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
