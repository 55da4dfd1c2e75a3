"""Would step-level (in-flight) batching pay on this machine? The experiment DESIGN.md §7 calls
for before building it, on the default `tiger` model (beam 20, 20-item histories, bf16).

genrec batches at request boundaries: a batch of n requests runs the encoder, then the 4 decode
levels, and ends together (semantic IDs have a fixed length). Step-level batching would start a
new group every iteration and run, per iteration, the new group's encoder plus one decode level
for each group in flight, fused into one call (Orca's selective batching). This measures the
pieces, on one thread as each `genrec serve` worker runs them:

- `request_batch_ms[n]`: a whole request-level batch of n (`ModelRunner.run`, what serves today);
- `encoder_ms[n]`: the encoder for n requests;
- `level_ms[n]`: one decode level (the 3rd, 20 beams each) for n requests, so `level_ms[4n]`
  is the fused level of four groups of n, if the four were at the same level (an optimistic
  stand-in: in flight they sit at different levels and cache lengths, which a real fused call
  must pad).

From them, per group size n: the step-level iteration `encoder_ms[n] + level_ms[4n]`
(bookkeeping left out: optimistic again) and its throughput n / iteration, against request-level
n / batch. Latency: without queueing, one batch against 4 iterations (one per level); for a
request that just missed a start (what a tail latency sees: it waits a whole batch, or a whole
iteration, first), 2 batches against 5 iterations. Writes JSON and a PNG of that latency against
throughput for both.

    python benchmarks/step_batching.py --run RUN [--compile] [--sizes 1,2,4,8,16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--sizes", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    from genrec.decoding.steppers import TigerStepper
    from genrec.runtime import bf16_is_native, tune_allocator
    from genrec.serving.history import dataset_histories, user_index
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig
    from genrec.training.run import load_run

    tune_allocator()
    loaded = load_run(args.run)
    if loaded.kind != "tiger":
        raise SystemExit("this experiment is about the encoder-decoder `tiger` model")
    bf16 = bf16_is_native("cpu")   # an AVX2-only CPU runs bf16 20-50x slower: fp32 there
    runner = ModelRunner(loaded, RunnerConfig(bf16=bf16, compile=args.compile))
    model, data, vocab = loaded.model, loaded.data, loaded.data.vocab
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    users = sorted(histories)
    sizes = [int(s) for s in args.sizes.split(",")]

    def requests(n):
        return [Request(index[u], histories[u][-20:], k=10, exclude=histories[u]) for u in users[:n]]

    def prompts(n):
        return data.prompt_batch([index[u] for u in users[:n]], [histories[u][-20:] for u in users[:n]])

    result = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}, 1 thread", "run": str(args.run),
              "bf16": bf16, "compile": args.compile, "request_batch_ms": {}, "encoder_ms": {}, "level_ms": {}}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for n in sorted(set(sizes) | {4 * n for n in sizes}):
            ids, mask = prompts(n)
            stepper = TigerStepper(model, vocab, ids, mask)
            beams = torch.zeros(n, 20, dtype=torch.long)
            tokens = [torch.full((n, 20), vocab.level_start(level)) for level in range(2)]

            def third_level():
                walk = stepper.subset(torch.arange(n))   # a fresh decode cache
                walk.step(None, 0)
                walk.reorder(beams[:, :1])
                walk.step(tokens[0][:, :1], 1)
                walk.reorder(beams)
                return walk

            levels = []
            for _ in range(args.repeats):
                walk = third_level()
                start = time.perf_counter()
                walk.step(tokens[1], 2)
                levels.append(time.perf_counter() - start)
            result["level_ms"][n] = round(1000 * statistics.median(levels), 2)
            result["encoder_ms"][n] = round(median_ms(lambda: TigerStepper(model, vocab, ids, mask), args.repeats), 2)
            if n in sizes:
                batch = requests(n)
                result["request_batch_ms"][n] = round(median_ms(lambda: runner.run(batch), args.repeats), 2)
    rows = []
    for n in sizes:
        batch_ms = result["request_batch_ms"][n]
        iteration_ms = result["encoder_ms"][n] + result["level_ms"][4 * n]
        rows.append({"group": n,
                     "request_level": {"req_per_s_per_core": round(1000 * n / batch_ms, 1), "latency_ms": batch_ms,
                                       "latency_just_missed_ms": round(2 * batch_ms, 2)},
                     "step_level_fused": {"iteration_ms": round(iteration_ms, 2),
                                          "req_per_s_per_core": round(1000 * n / iteration_ms, 1),
                                          "latency_ms": round(4 * iteration_ms, 2),
                                          "latency_just_missed_ms": round(5 * iteration_ms, 2)}})
    result["by_group_size"] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_batching.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    _plot(rows, args.out / "step_batching.png")


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("request_level", "request-level batches (genrec)"),
                       ("step_level_fused", "step-level, 4 groups fused (optimistic)")):
        xs = [r[key]["req_per_s_per_core"] for r in rows]
        ys = [r[key]["latency_just_missed_ms"] for r in rows]
        ax.plot(xs, ys, marker="o", label=label)
        for r, x, y in zip(rows, xs, ys):
            ax.annotate(str(r["group"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("requests / s per core")
    ax.set_ylabel("latency of a request that just missed a start, ms")
    ax.set_title("tiger, beam 20, bf16, 1 thread; labels: requests per group")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
