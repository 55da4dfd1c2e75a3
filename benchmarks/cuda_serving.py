"""The serving path on a CUDA device, unchanged from the CPU path: identity with the CPU runner and
with `transformers` generate on the same GPU, bf16 overlap, the causal prefix cache, batch times,
the engine's open-loop throughput within the latency budget against generate's best batch size on
the same GPU, `genrec serve` over HTTP on loopback (identity, a burst, events, SIGTERM), where a
batch's time goes (torch.profiler: launches, host syncs, device busy), the same compiled, what
CUDA graphs would save on the model's own work (`graph_probe`), and the whole search captured as
CUDA graphs as `genrec serve --cuda-graphs` runs it (`graphs`).

    python benchmarks/cuda_serving.py --run TIGER_RUN [--causal-run CAUSAL_RUN] [--device cuda]
                                      [--sections identity,prefix_cache,http,profile,throughput,graphs...]

Each section's result is printed as it ends and the JSON (`cuda_serving.json` in --out) is
rewritten after each, so a run cut short still leaves what it measured. With `--device cpu` it
runs the same code on the CPU (a dry run of the script; the figures mean nothing there).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from engine_open_loop import offer
from genrec.runtime import matmul_peak_flops
from genrec.serving.bench import _free_port, _wait_healthy, flops_per_request, hf_baseline
from genrec.serving.engine import Engine, EngineConfig
from genrec.serving.history import dataset_histories, user_index
from genrec.serving.runner import ModelRunner, Request, RunnerConfig
from genrec.training.run import load_run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampled_users(loaded, count: int, seed: int = 0) -> list[str]:
    users = sorted(dataset_histories(loaded.dataset))
    return sorted(np.random.default_rng(seed).choice(users, count, replace=False).tolist())


def sampled_requests(loaded, count: int, exclude_history: bool, seed: int = 0) -> list[Request]:
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    return [Request(index[u], histories[u], k=10, exclude=histories[u] if exclude_history else None)
            for u in sampled_users(loaded, count, seed)]


def ranked(runner, requests: list[Request], batch: int = 50) -> list[tuple[list, list]]:
    return [(list(map(int, items)), list(map(float, scores)))
            for lo in range(0, len(requests), batch) for items, scores in runner.run(requests[lo:lo + batch])]


def same_up_to_ties(a: tuple[list, list], b_items: list, tol: float = 1e-4) -> bool:
    """Equal lists, except that items whose scores tie within `tol` may swap places."""
    items, scores = a
    if len(items) != len(b_items):
        return False
    return all(x == y or any(abs(scores[j] - scores[i]) < tol for i in range(len(scores)) if i != j)
               for j, (x, y) in enumerate(zip(items, b_items)))


def compare(ours: list, theirs: list[list]) -> dict:
    shared = sum(len(set(a[0]) & set(b)) for a, b in zip(ours, theirs))
    return {"identical_lists": sum(a[0] == b for a, b in zip(ours, theirs)) / len(ours),
            "identical_up_to_score_ties": sum(same_up_to_ties(a, b) for a, b in zip(ours, theirs)) / len(ours),
            "item_overlap": round(shared / max(1, sum(len(b) for b in theirs)), 4)}


def identity(args, device: torch.device, result: dict) -> None:
    from genrec.decoding.hf_baseline import hf_generate_topk
    from genrec.models.tiger import to_hf

    cpu_run, dev_run = load_run(args.run), load_run(args.run)
    requests = sampled_requests(cpu_run, args.users, exclude_history=False)
    on_cpu = ranked(ModelRunner(cpu_run, RunnerConfig(device="cpu")), requests)
    on_dev = ranked(ModelRunner(dev_run, RunnerConfig(device=str(device))), requests)
    bf16 = ranked(ModelRunner(dev_run, RunnerConfig(device=str(device), bf16=True)), requests)
    hf = to_hf(dev_run.model).to(device).eval()
    generated = []
    for lo in range(0, len(requests), 50):
        chunk = requests[lo:lo + 50]
        ids, mask = dev_run.data.prompt_batch([r.user_idx for r in chunk], [r.history for r in chunk])
        items, _ = hf_generate_topk(hf, ids.to(device), mask.to(device), dev_run.table.trie, dev_run.data.vocab,
                                    beam=20, k=10)
        generated += items.tolist()
    result["identity"] = {"users": len(requests),
                          "device_engine_vs_cpu_engine": compare(on_dev, [a[0] for a in on_cpu]),
                          "device_engine_vs_device_hf_generate": compare(on_dev, generated),
                          "device_bf16_vs_device_fp32_item_overlap":
                              compare(bf16, [a[0] for a in on_dev])["item_overlap"]}


def batch_times(runner, requests: list[Request], sizes: list[int], device: torch.device) -> dict:
    out = {}
    for size in sizes:
        batch = requests[:size]
        for _ in range(2):
            runner.run(batch)
        times = []
        for _ in range(5):
            sync(device)
            start = time.perf_counter()
            runner.run(batch)
            sync(device)
            times.append(time.perf_counter() - start)
        out[size] = round(1000 * statistics.median(times), 2)
    return out


def open_loop(runner, requests: list[Request], args, label: str, workers: int, max_batch: int = 0) -> dict:
    """Poisson load at rising rates through `Engine`, until p99 passes the budget twice."""
    engine = Engine(runner, EngineConfig(max_batch=max_batch or args.max_batch, workers=workers, max_queue=4096,
                                         deadline_ms=1000)).start()
    levels, misses = [], 0
    try:
        for rate in map(float, args.rates.split(",")):
            levels.append(offer(engine, requests, rate, args.seconds, random.Random(0)))
            print(json.dumps({"engine": label, **levels[-1]}), flush=True)
            misses = misses + 1 if levels[-1]["p99_ms"] is None or levels[-1]["p99_ms"] > args.budget_ms else 0
            if misses == 2:   # past capacity twice: higher rates only queue
                break
            time.sleep(0.5)
    finally:
        engine.stop()
    within = [lv for lv in levels if lv["p99_ms"] is not None and lv["p99_ms"] <= args.budget_ms
              and not lv["refused_429"] and not lv["failed_503"]]
    best = max(within, key=lambda lv: lv["throughput_req_per_s"], default=None)
    return {"levels": levels, "best_within_budget": best}


def hf_generate_rates(loaded, users: list[str], args, device: torch.device) -> dict:
    """`transformers` generate's req/s per precision and batch size on the same device."""
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    rates = {}
    for bf16 in (False, True):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            by_batch = hf_baseline(loaded, users, histories, index, map(int, args.hf_batch_sizes.split(",")),
                                   log=lambda line: print(line, flush=True), device=device)
        rates.update({f"{'bf16' if bf16 else 'fp32'} batch {batch}": rate for batch, rate in by_batch.items()})
    return rates


def throughput(args, device: torch.device, result: dict, compiled: bool = False) -> None:
    """Batch times, then open-loop Poisson load through `Engine` per precision and worker count,
    then (eager only) generate's req/s per batch size on the same device, and the ratio."""
    loaded = load_run(args.run)
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in sorted(histories)]
    section = result["throughput_compiled" if compiled else "throughput"] = {
        "max_batch": args.max_batch, "seconds_per_level": args.seconds, "latency_budget_ms": args.budget_ms,
        "batch_ms": {}, "open_loop": {}}
    sizes = [s for s in (1, 8, 32, 64, 128) if s <= max(args.max_batch, 128)]
    for precision in args.precisions.split(","):
        started = time.monotonic()
        runner = ModelRunner(loaded, RunnerConfig(device=str(device), bf16=precision == "bf16", compile=compiled))
        section.setdefault("runner_ready_s", {})[precision] = round(time.monotonic() - started, 1)
        section["batch_ms"][precision] = batch_times(runner, requests, sizes, device)
        print(json.dumps({precision: section["batch_ms"][precision], "ready_s": section["runner_ready_s"]}), flush=True)
        for workers in map(int, args.workers.split(",")):
            label = f"{precision}, workers {workers}"
            section["open_loop"][label] = open_loop(runner, requests, args, label, workers)
            write(args, result)
    if not compiled:
        section["hf_generate_req_per_s"] = hf_generate_rates(loaded, sorted(histories)[: args.hf_users], args, device)
    hf_best = max(result["throughput"]["hf_generate_req_per_s"].values())
    bests = [v["best_within_budget"]["throughput_req_per_s"] for v in section["open_loop"].values()
             if v["best_within_budget"]]
    flops = flops_per_request(loaded.model, loaded.table.depth, 20, 1 + loaded.config.max_history * loaded.table.depth)
    peak = result["device"]["matmul_peak_bf16_tflops"] * 1e12
    section.update(hf_best_req_per_s=hf_best, engine_best_within_budget_req_per_s=max(bests, default=None),
                   speedup_within_budget=round(max(bests) / hf_best, 2) if bests else None,
                   gflops_per_request=round(flops / 1e9, 3),
                   mfu_bf16_within_budget=round(max(bests) * flops / peak, 5) if bests else None)


def profile(args, device: torch.device, result: dict, batch: int = 8) -> None:
    """Where one eager bf16 batch's time goes: the ops by host time, kernel launches, host syncs,
    and the share of the wall time the device is busy."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    loaded = load_run(args.run)
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in sorted(histories)[:batch]]
    runner = ModelRunner(loaded, RunnerConfig(device=str(device), bf16=True))
    for _ in range(3):
        runner.run(requests)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    start = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        runner.run(requests)
        sync(device)
    wall = time.perf_counter() - start
    events = prof.key_averages()

    def device_us(e):
        return getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))

    by_name = {e.key: e for e in events}
    launches = sum(e.count for e in events if "LaunchKernel" in e.key or "cuLaunch" in e.key)
    result["profile"] = {
        "batch": batch, "wall_ms_profiled": round(1000 * wall, 2),
        "device_busy_ms": round(sum(device_us(e) for e in events if e.device_type.name == "CUDA") / 1000, 2),
        "kernel_launches": launches,
        "host_syncs": {k: by_name[k].count for k in by_name
                       if "Synchronize" in k or "Memcpy" in k or k in ("aten::item", "aten::_local_scalar_dense")},
        "top_ops_by_host_ms": [(e.key, e.count, round(e.self_cpu_time_total / 1000, 2))
                               for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]]}


def prefix_cache(args, device: torch.device, result: dict, history: int = 50) -> None:
    """Prefill of a returning user whose history grew by one item, with and without the cache."""
    from genrec.serving.prefix_cache import PrefixCache

    loaded = load_run(args.causal_run)
    inter = loaded.dataset.interactions.sort_values(["user_idx", "position"])
    per_user = [list(g) for _, g in inter.groupby("user_idx")["item_idx"] if len(g) > history][: args.users]
    plain = ModelRunner(loaded, RunnerConfig(device=str(device)))
    cached = ModelRunner(loaded, RunnerConfig(device=str(device), prefix_cache_blocks=100_000))
    model, data = loaded.model, loaded.data
    section = result["prefix_cache"] = {"history_items": history, "users": len(per_user), "by_batch": {}}
    for batch in (1, 8):
        cached.prefix_cache = PrefixCache(cached.prefix_cache.block_size, 100_000)
        full, reuse, identical = [], [], 0
        with torch.no_grad():
            for first in range(0, len(per_user) - batch + 1, batch):
                users = range(first, first + batch)
                before = [Request(u, per_user[u][:history]) for u in users]
                after = [Request(u, per_user[u][:history + 1], exclude=per_user[u][:history + 1]) for u in users]
                cached.prefill(before)
                ids, mask = data.prompt_batch(list(users), [r.history for r in after])
                ids, mask = ids.to(device), mask.to(device)
                sync(device)
                start = time.perf_counter()
                model.extend(ids, mask if batch > 1 else None)
                sync(device)
                full.append(time.perf_counter() - start)
                start = time.perf_counter()
                cached.prefill(after)
                sync(device)
                reuse.append(time.perf_counter() - start)
                for a, b in zip(cached.run(after), plain.run(after)):
                    identical += int(list(a[0]) == list(b[0]))
        section["by_batch"][batch] = {"prefill_ms_full_median": round(1000 * statistics.median(full), 2),
                                      "prefill_ms_cached_median": round(1000 * statistics.median(reuse), 2),
                                      "speedup": round(statistics.median(full) / statistics.median(reuse), 2),
                                      "top10_identical_fraction": identical / (len(full) * batch)}


def http_service(args, device: torch.device, result: dict) -> None:
    """`genrec serve` as a user starts it (CUDA picked by itself; `--serve-args` adds flags such as
    --cuda-graphs): 200 users' top-10 against the CPU engine, a burst of 2,000 requests at
    concurrency 32, events, /metrics, SIGTERM."""
    loaded = load_run(args.run)
    users, ids = sampled_users(loaded, args.users), loaded.dataset.items["item_id"].astype(str).to_numpy()
    reference = ranked(ModelRunner(loaded, RunnerConfig(device="cpu")),
                       sampled_requests(loaded, args.users, exclude_history=True))
    port, db = _free_port(), Path(tempfile.mkdtemp()) / "events.sqlite"
    log = open(Path(tempfile.gettempdir()) / "cuda_serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "genrec", "serve", "--run", str(args.run), "--port", str(port),
                               "--db", str(db), *shlex.split(args.serve_args)], stdout=log, stderr=subprocess.STDOUT)
    section = result["http"] = {"serve_args": args.serve_args}
    try:
        started = time.monotonic()
        _wait_healthy(port, server, timeout=240)
        section["ready_s"] = round(time.monotonic() - started, 1)

        def call(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers={"content-type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            conn.close()
            return response.status, payload

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda u: call("POST", "/v1/recommend", {"user_id": u, "k": 10}), users))
            served = [([int(np.flatnonzero(ids == r["item_id"])[0]) for r in json.loads(p)["items"]],
                       [r["score"] for r in json.loads(p)["items"]]) for s, p in answers]
            section["identity_vs_cpu_engine"] = compare(served, [a[0] for a in reference])
            section["identity_statuses"] = sorted({s for s, _ in answers})
            burst = [users[i % len(users)] for i in range(2000)]
            start = time.perf_counter()
            statuses = list(pool.map(lambda u: call("POST", "/v1/recommend", {"user_id": u, "k": 10})[0], burst))
            section["burst_2000_at_c32"] = {"req_per_s": round(2000 / (time.perf_counter() - start), 1),
                                            "statuses": {str(s): statuses.count(s) for s in set(statuses)}}
        status, _ = call("POST", "/v1/events", {"user_id": users[0], "item_ids": ["50", "98"]})
        section["events_status"] = status
        metrics = call("GET", "/metrics")[1].decode()
        section["metrics_batch_size_lines"] = [ln for ln in metrics.splitlines()
                                               if ln.startswith("genrec_batch_size_sum") or
                                               ln.startswith("genrec_batch_size_count")]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            section["sigterm_exit_code"] = server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            section["sigterm_exit_code"] = "killed after 60 s"
        log.close()
        section["server_log_tail"] = (Path(tempfile.gettempdir()) / "cuda_serve.log").read_text()[-1500:]


def graphs(args, device: torch.device, result: dict) -> None:
    """`--cuda-graphs`: the whole search captured per batch bucket (serving/whole_search.py). Top-10 of
    200 users against the CPU engine, batch times graphed vs eager on the same device, one graphed
    bf16 batch's launches and syncs, open-loop load with batches up to 128, and the ratio to
    generate's best (measured here unless `throughput` ran before in the same call). With
    --causal-run, also the causal run's identity and batch times, graphed vs eager, in fp32."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    loaded = load_run(args.run)
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in sorted(histories)]
    sample = sampled_requests(loaded, args.users, exclude_history=True)
    on_cpu = ranked(ModelRunner(load_run(args.run), RunnerConfig(device="cpu")), sample)
    section = result["graphs"] = {"capture_s": {}, "identity_vs_cpu_engine": {}, "batch_ms": {}, "open_loop": {}}
    for precision in args.precisions.split(","):
        bf16 = precision == "bf16"
        started = time.monotonic()
        graphed = ModelRunner(loaded, RunnerConfig(device=str(device), bf16=bf16, cuda_graphs=True))
        section["capture_s"][precision] = round(time.monotonic() - started, 1)
        eager = ModelRunner(loaded, RunnerConfig(device=str(device), bf16=bf16))
        section["identity_vs_cpu_engine"][precision] = compare(ranked(graphed, sample), [a[0] for a in on_cpu])
        sizes = [1, 8, 32, 64, 128]
        section["batch_ms"][precision] = {"graphed": batch_times(graphed, requests, sizes, device),
                                          "eager": batch_times(eager, requests, sizes, device)}
        print(json.dumps({precision: {k: section[k][precision] for k in ("capture_s", "identity_vs_cpu_engine",
                                                                         "batch_ms")}}), flush=True)
        if bf16:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with torch_profile(activities=activities) as prof:
                graphed.run(requests[:8])
                sync(device)
            events = prof.key_averages()
            section["bf16_batch_of_8_profile"] = {
                "kernel_launches": sum(e.count for e in events if "LaunchKernel" in e.key),
                "graph_launches": sum(e.count for e in events if "GraphLaunch" in e.key),
                "host_syncs": sum(e.count for e in events if "Synchronize" in e.key or e.key == "aten::item")}
        section["open_loop"][precision] = open_loop(graphed, requests, args, f"graphs {precision}", workers=1,
                                                    max_batch=128)
        write(args, result)
    if args.causal_run:   # the same buckets serve a causal run, its prefill inside the graph (fp32)
        causal = load_run(args.causal_run)
        causal_sample = sampled_requests(causal, args.users, exclude_history=True)
        causal_cpu = ranked(ModelRunner(load_run(args.causal_run), RunnerConfig(device="cpu")), causal_sample)
        graphed = ModelRunner(causal, RunnerConfig(device=str(device), cuda_graphs=True))
        eager = ModelRunner(load_run(args.causal_run), RunnerConfig(device=str(device)))
        sizes = [1, 8, 32, 128]
        section["causal_fp32"] = {
            "identity_vs_cpu_engine": compare(ranked(graphed, causal_sample), [a[0] for a in causal_cpu]),
            "batch_ms": {"graphed": batch_times(graphed, causal_sample, sizes, device),
                         "eager": batch_times(eager, causal_sample, sizes, device)}}
        print(json.dumps({"causal_fp32": section["causal_fp32"]}), flush=True)
        write(args, result)
    hf = (result.get("throughput") or {}).get("hf_generate_req_per_s") or \
        hf_generate_rates(loaded, sorted(histories)[: args.hf_users], args, device)
    bests = [v["best_within_budget"]["throughput_req_per_s"] for v in section["open_loop"].values()
             if v["best_within_budget"]]
    section.update(hf_generate_req_per_s=hf, hf_best_req_per_s=max(hf.values()),
                   engine_best_within_budget_req_per_s=max(bests, default=None),
                   speedup_within_budget=round(max(bests) / max(hf.values()), 2) if bests else None)


def graph_probe(args, device: torch.device, result: dict) -> None:
    """What CUDA graphs could save: the model's own work for one batch (TIGER's encoder, then
    each decode level over fixed beams; no search bookkeeping) eagerly vs replayed as one captured
    graph, and the whole `ModelRunner.run` of the same batch for scale. bf16 autocast."""
    from genrec.decoding.steppers import TigerStepper

    loaded = load_run(args.run)
    runner = ModelRunner(loaded, RunnerConfig(device=str(device), bf16=True))
    model, vocab = loaded.model, loaded.data.vocab
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    section = result["graph_probe"] = {}
    for batch in (8, 64):
        users = sorted(histories)[:batch]
        requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in users]
        ids, mask = (t.to(device) for t in loaded.data.prompt_batch([index[u] for u in users],
                                                                    [histories[u] for u in users]))
        parents = torch.zeros(batch, 20, dtype=torch.long, device=device)
        tokens = [torch.full((batch, 20), vocab.level_start(level), device=device)
                  for level in range(vocab.depth)]

        def model_work():
            stepper = TigerStepper(model, vocab, ids, mask)
            out = stepper.step(None, 0)
            for level in range(1, vocab.depth):
                stepper.reorder(parents)
                out = stepper.step(tokens[level - 1], level)
            return out

        def timed(fn, repeats=10):
            times = []
            for _ in range(repeats):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times.append(time.perf_counter() - start)
            return round(1000 * statistics.median(times), 2)

        row = section[batch] = {"runner_run_ms": batch_times(runner, requests, [batch], device)[batch]}
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False):
            for _ in range(3):
                model_work()
            row["model_eager_ms"] = timed(model_work)
            if device.type == "cuda":
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        model_work()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    captured = model_work()
                graph.replay()
                row["graph_output_equals_eager"] = bool(torch.allclose(captured.float(), model_work().float(),
                                                                        atol=1e-3, equal_nan=True))
                row["model_graph_replay_ms"] = timed(graph.replay, 20)
        print(json.dumps({batch: row}), flush=True)


def write(args, result: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cuda_serving.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a tiger run")
    parser.add_argument("--causal-run", type=Path, help="a causal run with max_history > 50 (prefix cache)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--sections", default="identity,prefix_cache,http,profile,throughput,throughput_compiled")
    parser.add_argument("--rates", default="100,200,400,800,1200,1600,2400")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--hf-batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--hf-users", type=int, default=256)
    parser.add_argument("--serve-args", default="", help="extra `genrec serve` flags for the http section")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False   # fp32 identity means fp32 arithmetic
    result = {"device": {"name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                         "torch": torch.__version__, "host_cores": os.cpu_count()}}
    n = 8192 if device.type == "cuda" else 1024
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        result["device"][f"matmul_peak_{name}_tflops"] = round(matmul_peak_flops(n, 6, dtype, device) / 1e12, 2)
    print(json.dumps(result["device"]), flush=True)
    sections = {"identity": identity, "prefix_cache": prefix_cache, "throughput": throughput, "http": http_service,
                "profile": profile, "graph_probe": graph_probe, "graphs": graphs,
                "throughput_compiled": lambda *a: throughput(*a, compiled=True)}
    for name in args.sections.split(","):
        if name == "prefix_cache" and not args.causal_run:
            continue
        started = time.monotonic()
        try:
            sections[name](args, device, result)
        except Exception:
            result[f"{name}_error"] = traceback.format_exc()
            print(result[f"{name}_error"], file=sys.stderr, flush=True)
        result.setdefault("section_seconds", {})[name] = round(time.monotonic() - started, 1)
        print(json.dumps({name: result.get(name)}, indent=1), flush=True)
        write(args, result)


if __name__ == "__main__":
    main()
