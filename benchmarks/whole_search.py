"""The whole search compiled as one call against the search compiled per piece, side by side.

`--compile` gives a tiger run, and a causal run without the prefix cache, the whole search
(`serving/whole_search.py`: prompt pass, every decode level and the beam bookkeeping in one
compiled function); a causal run with `--prefix-cache-blocks` keeps the per-piece compile (the
prefill and each decode step compiled apart, eager bookkeeping between them). Both runners are
built here on the same weights, and the same random batches of real users (history excluded)
alternate between them, one torch thread as each `genrec serve` worker runs:

- `batch_ms[size]`: median time of a batch, per path;
- `identical_lists`: requests whose top-10 items are the same on both paths;
- `start_s`: each runner's start-up (compilation; inductor's on-disk cache makes a second run quicker).

Writes OUT/whole_search_KIND.json and a PNG of batch time against batch size for both paths.

    python benchmarks/whole_search.py --run RUN [--bf16] [--sizes 1,4,8,16] [--repeats 12]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--sizes", default="1,4,8,16")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from genrec.runtime import compile_for_decoding, tune_allocator, usable_bf16
    from genrec.serving.history import dataset_histories, user_index
    from genrec.serving.runner import ModelRunner, Request, RunnerConfig
    from genrec.training.run import load_run

    args.bf16 = usable_bf16(args.bf16)   # fp32 where bf16 has no kernels (an AVX2-only CPU)

    tune_allocator()
    started = time.perf_counter()
    whole = ModelRunner(load_run(args.run), RunnerConfig(bf16=args.bf16, compile=True))
    whole_start = time.perf_counter() - started
    if whole.whole_search is None:
        raise SystemExit(f"{args.run}: not a run the whole-search path serves (tiger or causal, dense trie)")
    started = time.perf_counter()
    # What --compile does where the whole search is not taken (causal with the prefix cache).
    pieces = ModelRunner(load_run(args.run), RunnerConfig(bf16=args.bf16))
    compile_for_decoding(pieces.loaded.model)
    pieces.compile_shape_classes()
    pieces_start = time.perf_counter() - started

    dataset = whole.loaded.dataset
    histories, index = dataset_histories(dataset), user_index(dataset)
    users = sorted(histories)
    rng = np.random.default_rng(0)
    batch_ms: dict[int, dict[str, float]] = {}
    same = compared = 0
    for size in (int(s) for s in args.sizes.split(",")):
        times = {"whole": [], "pieces": []}
        for _ in range(args.repeats + 1):   # the first round warms both
            chosen = [users[i] for i in rng.choice(len(users), size, replace=False)]
            batch = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in chosen]
            lists = {}
            for name, runner in (("whole", whole), ("pieces", pieces)):
                start = time.perf_counter()
                lists[name] = runner.run(batch)
                times[name].append(time.perf_counter() - start)
            same += sum(list(a[0]) == list(b[0]) for a, b in zip(lists["whole"], lists["pieces"]))
            compared += size
        batch_ms[size] = {name: round(statistics.median(t[1:]) * 1000, 1) for name, t in times.items()}
        batch_ms[size]["speedup"] = round(batch_ms[size]["pieces"] / batch_ms[size]["whole"], 2)
        print(size, batch_ms[size], flush=True)

    result = {"run": str(args.run), "kind": whole.kind, "bf16": args.bf16, "threads": args.threads,
              "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "start_s": {"whole": round(whole_start, 1), "pieces": round(pieces_start, 1)},
              "batch_ms": batch_ms, "identical_lists": f"{same}/{compared}"}
    print(json.dumps(result, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"whole_search_{whole.kind}.json").write_text(json.dumps(result, indent=2))
    plot(result, args.out / f"whole_search_{whole.kind}.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(size) for size in result["batch_ms"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, label in (("whole", "whole search compiled as one call"), ("pieces", "compiled per piece")):
        ax.plot(sizes, [row[name] for row in result["batch_ms"].values()], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(size) for size in sizes])
    ax.set_xlabel("requests per batch")
    ax.set_ylabel("batch time (ms, median)")
    precision = "bf16" if result["bf16"] else "fp32"
    ax.set_title(f"{result['kind']}, {precision}, {result['threads']} thread(s): identical lists "
                 f"{result['identical_lists']}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
