"""How fast this machine multiplies at the shapes TIGER's serving actually runs, against its
square-matmul peak: the ceiling under any engine on this CPU.

The bundled `tiger` (d_model 128, 6 x 64 heads, d_ff 1024, vocabulary 3026) multiplies rows =
20 beams x requests in its decode steps and 81 prompt tokens x requests in its encoder. For each
row count this times every product shape of a request (query / key / value, the three fused
into one, attention out, feed-forward in and out, the vocabulary head) in fp32, bf16 and int8
(`torch._int_mm`), and in fp32 over distinct weights that do not fit the cache (as a request's
do), one thread by default (the server's workers run one each), and reports GFLOP/s and the share
of the fp32 peak.

    python benchmarks/matmul_shapes.py [--threads 1] [--rows 20,40,81,162] [--out benchmarks/out]

Writes matmul_shapes.json and matmul_shapes.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genrec.runtime import bf16_is_native, matmul_peak_flops

# (name, in features, out features) of one TIGER layer's products and the head
SHAPES = [("q | k | v", 128, 384), ("q+k+v fused", 128, 1152), ("attention out", 384, 128),
          ("ff in", 128, 1024), ("ff out", 1024, 128), ("vocab head", 128, 3026)]


def seconds_per_call(fn, budget_s: float = 0.3) -> float:
    """Median over 5 rounds of one call's time, each round as many calls as fit ~budget/5."""
    fn()
    start = time.perf_counter()
    fn()
    calls = max(1, int(budget_s / 5 / max(time.perf_counter() - start, 1e-7)))
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def seconds_over_weights(x: torch.Tensor, fan_out: int, megabytes: float) -> float:
    """One product's time while it cycles over `megabytes` of distinct weights, as a request reads
    TIGER's ~18 MB of them: what the cache cannot hold comes from memory every time."""
    fan_in = x.shape[-1]
    weights = [torch.randn(fan_out, fan_in) for _ in range(max(1, int(megabytes * 1e6 / (4 * fan_in * fan_out))))]
    return seconds_per_call(lambda: [F.linear(x, w) for w in weights]) / len(weights)


def measure(rows: int, fan_in: int, fan_out: int) -> dict:
    flops = 2 * rows * fan_in * fan_out
    x, w = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in)
    xb, wb = x.bfloat16(), w.bfloat16()
    out = {"fp32": flops / seconds_per_call(lambda: F.linear(x, w)) / 1e9,
           "fp32_cold_weights": flops / seconds_over_weights(x, fan_out, 20) / 1e9,
           "bf16": flops / seconds_per_call(lambda: F.linear(xb, wb), budget_s=0.1) / 1e9}
    try:   # int8 x int8 -> int32; needs rows > 16 and multiples of 8 elsewhere
        xi, wi = torch.randint(-128, 127, (rows, fan_in), dtype=torch.int8), torch.randint(
            -128, 127, (fan_in, fan_out), dtype=torch.int8)
        out["int8"] = flops / seconds_per_call(lambda: torch._int_mm(xi, wi), budget_s=0.1) / 1e9
    except RuntimeError:
        out["int8"] = None
    return {k: None if v is None else round(v, 2) for k, v in out.items()}


def us_by_weight_megabytes(sizes_mb=(1, 4, 8, 32)) -> dict:
    """One 20x128x384 product over this many MB of distinct weights: where the cache stops holding
    them (past it, as slow as from memory)."""
    x = torch.randn(20, 128)
    return {mb: round(seconds_over_weights(x, 384, mb) * 1e6, 1) for mb in sizes_mb}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["gflops"])
    fig, ax = plt.subplots(figsize=(8, 4.4))
    width = 0.8 / len(SHAPES)
    for i, (name, _, _) in enumerate(SHAPES):
        ys = [result["gflops"][r][name]["fp32"] for r in rows]
        xs = [j + (i - len(SHAPES) / 2 + 0.5) * width for j in range(len(rows))]
        ax.bar(xs, ys, width, label=name)
        ax.scatter(xs, [result["gflops"][r][name]["fp32_cold_weights"] for r in rows], color="black", marker="_",
                   s=60, zorder=3, label="the same over 20 MB of weights" if i == 0 else None)
    ax.axhline(result["fp32_peak_gflops"], color="black", linestyle="--",
               label=f"fp32 peak, best square product ({result['fp32_peak_gflops']} GFLOP/s)")
    ax.set_xticks(range(len(rows)), [f"{r} rows" for r in rows])
    ax.set_ylabel("GFLOP/s (fp32)")
    ax.set_title(f"TIGER's serving products on this CPU, {result['threads']} thread(s)", fontsize=9)
    ax.set_ylim(0, result["fp32_peak_gflops"] * 1.4)   # room for the legend above the bars
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default="20,40,81,162")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The best square product of three sizes, before and after the shapes (a shared machine
    # drifts): the most this CPU gave at all, so the shares below are not flattered.
    peaks = [matmul_peak_flops(n=n) / 1e9 for n in (512, 1024, 2048)]
    gflops = {}
    for rows in (int(r) for r in args.rows.split(",")):
        gflops[rows] = {name: measure(rows, fan_in, fan_out) for name, fan_in, fan_out in SHAPES}
    peaks += [matmul_peak_flops(n=n) / 1e9 for n in (512, 1024, 2048)]
    peak = max(peaks)
    fp32 = [s["fp32"] for by_shape in gflops.values() for s in by_shape.values()]
    result = {"threads": args.threads, "fp32_peak_gflops": round(peak, 1),
              "fp32_square_gflops_512_1024_2048_before_after": [round(p, 1) for p in peaks],
              "bf16_is_native": bf16_is_native("cpu"), "gflops": gflops,
              "us_20x128x384_by_weight_megabytes": us_by_weight_megabytes(),
              "fp32_share_of_peak": {"min": round(min(fp32) / peak, 3), "median": round(statistics.median(fp32) / peak, 3),
                                     "max": round(max(fp32) / peak, 3)}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matmul_shapes.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "matmul_shapes.png")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
