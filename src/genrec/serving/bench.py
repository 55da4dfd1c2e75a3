"""`genrec bench serve`: the real HTTP server on loopback under closed-loop and open-loop
(Poisson) load, and the `transformers` generate baseline on the same weights in the same run.

The server runs as a `genrec serve` subprocess; the load generator and, afterwards, the baseline
run in this process. The client shares the machine's cores with the server, so on a 2-core
machine the figures are a lower bound for the server alone.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genrec.runtime import bf16_is_native, matmul_peak_flops
from genrec.serving import loadgen


@dataclass
class BenchConfig:
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    rates: tuple[float, ...] = (10, 25, 50, 100, 150, 200, 300)
    duration_s: float = 10.0
    users: int = 400
    k: int = 10
    latency_budget_ms: float = 100.0
    # generate's batch sizes and requests (empty / 0: by device). On a GPU its best batch was 64-128
    # (docs/serving.md), past the CPU's sizes, so it gets those there.
    hf_batch_sizes: tuple[int, ...] = ()
    hf_requests: int = 0
    serve_args: list[str] = field(default_factory=list)   # e.g. --bf16 --compile --max-batch 32
    http_processes: int = 1   # the server's --http-processes
    client_processes: int = 1   # load generator processes (loadgen.Clients): one falls behind past ~3,000 req/s offered


def flops_per_request(model, depth: int, beam: int, prompt_len: int) -> float:
    """TIGER: the encoder over the prompt (and its S x S attention), cross keys/values once, then
    for 1 + (depth - 1) x beam beam steps the rest of the decoder, the full-vocabulary head and
    the attention over the prompt."""
    c = model.config
    inner = c.num_heads * c.d_kv
    encoder = sum(p.numel() for layer in model.encoder_layers for p in layer.parameters())
    decoder = sum(p.numel() for layer in model.decoder_layers for p in layer.parameters())
    cross_kv = 2 * c.d_model * inner * c.num_decoder_layers
    steps = 1 + (depth - 1) * beam
    return (2 * encoder * prompt_len + 4 * prompt_len**2 * inner * c.num_encoder_layers + 2 * cross_kv * prompt_len
            + steps * (2 * (decoder - cross_kv) + 2 * c.d_model * c.vocab_size
                       + 4 * prompt_len * inner * c.num_decoder_layers))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, db: Path, args: list[str], log_path: Path) -> subprocess.Popen:
    """`genrec serve` as a subprocess, its output to `log_path`: a file, never a pipe, since a pipe
    nobody reads while the load runs fills (64 KiB) and the server then blocks on its next log line."""
    with open(log_path, "w") as log_file:   # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "genrec", "serve", "--run", str(run), "--port", str(port),
                                 "--db", str(db), *args], stdout=log_file, stderr=subprocess.STDOUT, text=True)


def _wait_healthy(port: int, server: subprocess.Popen, timeout: float = 300, log_path: Path | None = None) -> dict:
    """Once `GET /healthz` answers 200: its body (the server's max_batch among others)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            said = f":\n{log_path.read_text()[-4000:]}" if log_path is not None else ""
            raise RuntimeError(f"genrec serve exited with status {server.returncode}{said}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            if response.status == 200:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("genrec serve did not become healthy")


def _process_cpu_s(pid: int) -> float | None:
    """CPU seconds the process (not its children) has used: Linux's /proc, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The process's children (every thread's): Linux's /proc, else none."""
    return [int(c) for task in Path(f"/proc/{pid}/task").glob("*/children") for c in task.read_text().split()]


def _server_cpu_s(pid: int, http_processes: bool) -> float | None:
    """CPU seconds of the processes that serve HTTP: the server itself, or with --http-processes
    its children (not the engine's worker processes, which are one level further down)."""
    if not http_processes:
        return _process_cpu_s(pid)
    times = [_process_cpu_s(child) for child in child_pids(pid)]
    return None if not times or None in times else sum(times)


def run_bench(run: Path, config: BenchConfig, out: Path, log=print) -> dict:
    from genrec.serving.history import dataset_histories, user_index
    from genrec.training.run import load_run

    loaded = load_run(run)
    histories = dataset_histories(loaded.dataset)
    users = sorted(histories)[: config.users]
    bodies = [json.dumps({"user_id": u, "k": config.k}).encode() for u in users]
    port = _free_port()
    out.mkdir(parents=True, exist_ok=True)
    server_log = out / "serve_bench.server.log"
    server = start_server(run, port, out / "bench-events.sqlite",
                          [*config.serve_args, "--http-processes", str(config.http_processes)], server_log)
    phases = []
    clients = loadgen.Clients(config.client_processes)
    try:
        # The server's own max batch unless --max-batch was given.
        max_batch = _wait_healthy(port, server, log_path=server_log)["max_batch"]
        # Warm-up: the first batches compile (--compile: seconds per new shape class) and fill caches.
        clients.run("closed", port, bodies[:1], 1, 0.1, timeout=600)
        clients.run("closed", port, bodies, 64, min(10.0, config.duration_s), timeout=600)
        levels = [(f"closed loop, concurrency {c}", "closed", c) for c in config.concurrency]
        levels += [(f"open loop, {rate} req/s offered", "open", rate) for rate in config.rates]
        http_processes = config.http_processes > 1
        for name, mode, level in levels:
            cpu_before = _server_cpu_s(server.pid, http_processes)
            summary = clients.run(mode, port, bodies, level, config.duration_s).summary()
            cpu = None if cpu_before is None else _server_cpu_s(server.pid, http_processes) - cpu_before
            if cpu is not None:
                # The server's HTTP processes alone (event loop, engine threads; not worker processes):
                # near one core each, they and not the model are the limit, since answers and
                # refusals alike cost them.
                responses = max(1, sum(summary["statuses"].values()))
                summary["server_cpu_utilisation"] = round(cpu / summary["seconds"], 2)
                summary["server_cpu_ms_per_response"] = round(1000 * cpu / responses, 3)
            phases.append(summary)
            log(f"{name}: {summary}")
    finally:
        clients.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
    within = [p for p in phases if p["p99_ms"] is not None and p["p99_ms"] <= config.latency_budget_ms
              and p["errors"] == 0 and set(p["statuses"]) == {"200"}]
    best = max(within, key=lambda p: p["throughput_req_per_s"], default=None)

    # The baseline, on the same weights and prompts and the device the server used (it picks CUDA
    # when present), with the server gone (the device to itself).
    index = user_index(loaded.dataset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    batch_sizes = config.hf_batch_sizes or ((1, 8, 32, 64, 128) if on_gpu else (1, 4, 8, 16, 32))
    requests = config.hf_requests or (256 if on_gpu else 64)
    baseline = hf_baseline(loaded, users[:requests], histories, index, batch_sizes, config.k, log, device=device)
    hf_best = max(baseline.values())
    bf16 = "--bf16" in config.serve_args and bf16_is_native(device.type)   # else the server ran fp32
    prompt_len = 1 + loaded.config.max_history * loaded.table.depth
    flops = flops_per_request(loaded.model, loaded.table.depth, 20, prompt_len)
    peak = matmul_peak_flops(n=8192 if device.type == "cuda" else 2048,
                             dtype=torch.bfloat16 if bf16 else torch.float32, device=device)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    result = {
        "machine": f"{os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "run": str(run), "model": loaded.kind, "serve_args": config.serve_args,
        "http_processes": config.http_processes, "max_batch": max_batch, "client_processes": config.client_processes,
        "k": config.k, "beam": 20,
        "history_items": loaded.config.max_history, "phases": phases,
        "best_within_budget": best, "latency_budget_ms": config.latency_budget_ms,
        "hf_generate_req_per_s": baseline, "hf_best_req_per_s": hf_best,
        "speedup_within_budget": round(best["throughput_req_per_s"] / hf_best, 2) if best else None,
        "gflops_per_request": round(flops / 1e9, 3), "matmul_peak_gflops": round(peak / 1e9, 1),
        "mfu_within_budget": round(best["throughput_req_per_s"] * flops / peak, 3) if best else None,
        "precision": "bf16" if bf16 else "fp32",
    }
    if bf16:
        result["bf16_top10_overlap_vs_fp32"] = bf16_overlap(loaded, users[:200], histories, index,
                                                            compile="--compile" in config.serve_args)
        log(f"bf16 top-10 vs fp32, 200 users: {result['bf16_top10_overlap_vs_fp32']:.2%} of items shared")
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "serve_bench.png")
    return result


def hf_baseline(loaded, users: list[str], histories: dict, index: dict, batch_sizes, k: int = 10,
                log=print, device="cpu") -> dict:
    """Requests/s of `T5ForConditionalGeneration.generate(num_beams=20, prefix_allowed_tokens_fn=...)`
    on the run's weights, per batch size, for these users' requests."""
    from genrec.decoding.hf_baseline import hf_generate_topk
    from genrec.models.tiger import to_hf

    hf = to_hf(loaded.model).to(device)
    rows, hist = [index[u] for u in users], [histories[u] for u in users]

    def generate(lo: int, hi: int) -> None:
        ids, mask = loaded.data.prompt_batch(rows[lo:hi], hist[lo:hi])
        hf_generate_topk(hf, ids.to(device), mask.to(device), loaded.table.trie, loaded.data.vocab, beam=20, k=k)

    generate(0, 1)   # untimed: generate's first call sets itself up
    baseline = {}
    for batch in batch_sizes:
        start = time.perf_counter()
        for lo in range(0, len(rows), batch):
            generate(lo, lo + batch)
        baseline[batch] = round(len(rows) / (time.perf_counter() - start), 2)
        log(f"transformers generate, batch {batch}: {baseline[batch]} req/s")
    return baseline


def bf16_overlap(loaded, users: list[str], histories: dict, index: dict, compile: bool = False) -> float:
    """Share of fp32's top-10 items that bf16 autocast also returns, for the service's requests, on
    the path measured: compiled, inductor keeps a fused kernel's intermediates in fp32 and so
    rounds differently from eager bf16 (tiger: 99.4 % compiled, 99.5 % eager)."""
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig
    from genrec.training.run import load_run

    requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in users]
    lists = {}
    for bf16 in (False, True):   # a fresh copy to compile: the per-piece compile changes the model in place
        runner = ModelRunner(load_run(loaded.path) if bf16 and compile else loaded,
                             RunnerConfig(bf16=bf16, compile=bf16 and compile))
        lists[bf16] = [items for lo in range(0, len(requests), 50)
                       for items, _ in runner.run(requests[lo:lo + 50])]
    shared = sum(len(set(a) & set(b)) for a, b in zip(lists[False], lists[True]))
    return shared / max(1, sum(len(a) for a in lists[False]))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for mode, marker, label in (("closed", "o", "closed loop (label: concurrency)"),
                                ("open", "s", "open loop, Poisson (label: offered req/s)")):
        points = [p for p in result["phases"] if p["mode"] == mode and p["p99_ms"] is not None]
        if not points:
            continue
        xs, ys = [p["throughput_req_per_s"] for p in points], [p["p99_ms"] for p in points]
        ax.plot(xs, ys, marker=marker, label=label)
        for p, x, y in zip(points, xs, ys):
            ax.annotate(f"{p['level']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(result["latency_budget_ms"], color="grey", linestyle=":", label="p99 budget")
    ax.axvline(result["hf_best_req_per_s"], color="tab:red", linestyle="--",
               label=f"transformers generate, best batch ({result['hf_best_req_per_s']} req/s, no latency bound)")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (successful requests / s)")
    ax.set_ylabel("p99 latency (ms, log scale)")
    speed = result["speedup_within_budget"]
    ax.set_title(f"genrec serve ({result['model']}, beam {result['beam']}, top-{result['k']}) on loopback: "
                 f"{speed}x the baseline within p99 <= {result['latency_budget_ms']:g} ms", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
