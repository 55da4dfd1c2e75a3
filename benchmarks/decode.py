"""Decoding speed: genrec's constrained beam search vs `transformers` generate with
`prefix_allowed_tokens_fn`, on identical TIGER weights and inputs, side by side in one run.

    python benchmarks/decode.py [--run RUN] [--requests 256] [--beam 20] [--k 10]

Inputs: ML-100K test users, their last 20 items (+ user token). Default weights: a freshly
initialised default-size TIGER (decoding cost does not depend on the weights); --run uses a trained
run. Modes: fp32, bf16 autocast, bf16 autocast + torch.compile per piece (genrec.runtime: the
encoder and the decode step, as before 2026-11-26), bf16 + the whole search compiled as one call
(serving/whole_search.py: what `--compile` runs for tiger now); --no-compile skips the compiled
modes (~2 min to compile). Where matmuls have no bf16 kernels (an AVX2-only CPU, where bf16 runs
20-50x slower) the eager bf16 mode is left out and the compiled modes run in fp32.
Prints JSON, writes OUT/decode.json and OUT/decode.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from common import matmul_peak_flops, median_time, ml100k_with_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--hf-requests", type=int, default=64)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-sizes", default="1,8,32,64,128,256")
    parser.add_argument("--hf-batch-sizes", default="1,8,32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile mode (~70 s to compile)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from genrec.runtime import bf16_is_native, compile_for_decoding, tune_allocator

    allocator_tuned = tune_allocator()  # for both searches: the baseline gains from it too
    bf16 = bf16_is_native("cpu")        # the compiled modes' precision
    precision = "bf16" if bf16 else "fp32"

    from genrec.data.dataset import load_dataset
    from genrec.decoding.beam_search import BeamResult, constrained_beam_search
    from genrec.decoding.hf_baseline import hf_generate_topk
    from genrec.decoding.steppers import TigerStepper
    from genrec.decoding.trie_torch import TorchTrie
    from genrec.models.factory import non_embedding_params
    from genrec.models.tiger import Tiger, TigerConfig, to_hf
    from genrec.semantic_ids.build import load_ids
    from genrec.training.data import SequenceData

    if args.run:
        from genrec.training.run import load_run

        loaded = load_run(args.run)
        model, data, table, dataset = loaded.model, loaded.data, loaded.table, loaded.dataset
    else:
        data_dir = ml100k_with_ids(args.out)
        dataset, table = load_dataset(data_dir), load_ids(data_dir).table
        data = SequenceData(dataset, "tiger", 20, table, user_buckets=2000)
        torch.manual_seed(0)
        model = Tiger(TigerConfig(vocab_size=data.vocab.size)).eval()
    hf = to_hf(model)
    trie, torch_trie = table.trie, TorchTrie(table.trie)
    test = dataset.examples("test").iloc[: args.requests]
    users = test["user_idx"].to_numpy()
    histories = [h[-20:] for h in test["history"]]

    compiled = None if args.no_compile else compile_for_decoding(copy.deepcopy(model))
    whole = None
    if not args.no_compile:
        from types import SimpleNamespace

        from genrec.serving.whole_search import WholeSearch

        whole = WholeSearch(SimpleNamespace(kind="tiger", model=copy.deepcopy(model), data=data), torch_trie,
                            args.beam, torch.device("cpu"), bf16=bf16)

    def ours(lo, hi, bf16=False, net=model):
        ids, mask = data.prompt_batch(users[lo:hi], histories[lo:hi])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return constrained_beam_search(TigerStepper(net, data.vocab, ids, mask), torch_trie,
                                           beam=args.beam, k=args.k, n_items=table.num_items)

    def ours_bf16(lo, hi):
        return ours(lo, hi, bf16=True)

    def ours_compiled(lo, hi):
        return ours(lo, hi, bf16=bf16, net=compiled)

    def ours_whole(lo, hi):
        items, scores = whole.run(users[lo:hi], histories[lo:hi])
        return BeamResult(torch.from_numpy(items[:, :args.k]), torch.from_numpy(scores[:, :args.k]))

    def theirs(lo, hi):
        ids, mask = data.prompt_batch(users[lo:hi], histories[lo:hi])
        return hf_generate_topk(hf, ids, mask, trie, data.vocab, beam=args.beam, k=args.k)

    def throughput(fn, n, batch):
        fn(0, min(batch, n))  # warm-up
        seconds = median_time(lambda: [fn(lo, min(lo + batch, n)) for lo in range(0, n, batch)], repeats=3)
        return n / seconds

    # Identity on the HF requests: a place counts as agreeing when the items are equal or our
    # score there ties (within 1e-5) with another of our top-k, which may then swap (as the tests).
    agree = agree_up_to_ties = total = 0
    for lo in range(0, args.hf_requests, 32):
        result, (b, _) = ours(lo, lo + 32), theirs(lo, lo + 32)
        a, s = result.items, result.scores
        tied = ((s[:, :, None] - s[:, None, :]).abs() < 1e-5).sum(-1) > 1
        agree += int((a == b).sum())
        agree_up_to_ties += int(((a == b) | tied).sum())
        total += a.numel()

    # bf16 autocast: how many of the fp32 top-k items it keeps, over all requests.
    def top_items(fn):
        return torch.cat([fn(lo, lo + 64).items for lo in range(0, args.requests, 64)])

    def overlap(a_items, b_items):
        return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(a_items, b_items)) / a_items.numel()

    fp32_items = top_items(ours)
    t0 = time.perf_counter()
    modes, overlaps = {"ours": ours}, {}
    if bf16:
        modes["ours_bf16"] = ours_bf16
        overlaps["bf16_top_k_overlap_with_fp32"] = overlap(fp32_items, top_items(ours_bf16))
    if compiled is not None:
        modes[f"ours_{precision}_compiled"], modes[f"ours_{precision}_whole"] = ours_compiled, ours_whole
        if bf16:
            overlaps["bf16_compiled_top_k_overlap_with_fp32"] = overlap(fp32_items, top_items(ours_compiled))
            overlaps["bf16_whole_top_k_overlap_with_fp32"] = overlap(fp32_items, top_items(ours_whole))
        else:   # first calls compile: made here, outside the timed loops
            top_items(ours_compiled), top_items(ours_whole)
    compile_seconds = time.perf_counter() - t0

    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                               f"{args.threads} threads",
                    "weights": str(args.run) if args.run else "random init (default TIGER size)",
                    "beam": args.beam, "k": args.k, "history_items": 20, "requests": args.requests,
                    "allocator_tuned": allocator_tuned,
                    "top_k_identical_fraction_vs_hf": agree / total,
                    "top_k_identical_fraction_vs_hf_up_to_ties": agree_up_to_ties / total, **overlaps,
                    "precision_of_compiled_modes": precision,
                    "compile_seconds_incl_overlap_runs": round(compile_seconds, 1) if compiled is not None else None,
                    **{name: {} for name in modes}, "hf_generate": {}}
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        for name, fn in modes.items():  # interleaved, so machine noise hits every mode alike
            result[name][bs] = round(throughput(fn, args.requests, bs), 1)
    for bs in [int(x) for x in args.hf_batch_sizes.split(",")]:
        result["hf_generate"][bs] = round(throughput(theirs, args.hf_requests, bs), 2)
    latency_ms = {name: round(1000 * float(np.median([median_time(lambda i=i: fn(i, i + 1), 1) for i in range(20)])), 2)
                  for name, fn in modes.items()}
    lat_hf = [median_time(lambda i=i: theirs(i, i + 1), 1) for i in range(10)]
    best = {name: max(result[name].values()) for name in (*modes, "hf_generate")}

    # FLOPs per request, where each weight acts: the encoder over the prompt once (plus its
    # S x S attention), the cross-attention keys/values over the prompt once, the rest of the
    # decoder and the tied full-vocabulary output projection for every beam at every level
    # (1 beam at the first), and each beam's attention over the prompt.
    from genrec.serving.bench import flops_per_request as tiger_flops

    flops_per_request = tiger_flops(model, table.depth, args.beam, 1 + 20 * table.depth)
    peaks = {"fp32": matmul_peak_flops(), **({"bf16": matmul_peak_flops(dtype=torch.bfloat16)} if bf16 else {})}
    fastest = max(modes, key=lambda name: best[name])
    result.update({
        "latency_ms_batch1_median": {**latency_ms, "hf_generate": round(1000 * float(np.median(lat_hf)), 1)},
        "best_throughput_req_per_s": best,
        "speedup_at_best_batch": {name: round(best[name] / best["hf_generate"], 1) for name in modes},
        "non_embedding_params": non_embedding_params(model),
        "gflops_per_request": round(flops_per_request / 1e9, 3),
        "matmul_peak_gflops": {name: round(peak / 1e9, 1) for name, peak in peaks.items()},
        "mfu": {name: round(best[name] * flops_per_request / peaks["fp32" if name == "ours" else precision], 3)
                for name in modes},
        "fastest": fastest,
    })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    plot(result, args.out / "decode.png")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    labels = {"ours": "genrec beam search (fp32)", "ours_bf16": "genrec beam search (bf16 autocast)",
              "ours_bf16_compiled": "genrec beam search (bf16 + torch.compile per piece)",
              "ours_bf16_whole": "genrec beam search (bf16, whole search compiled: --compile)",
              "ours_fp32_compiled": "genrec beam search (fp32 + torch.compile per piece)",
              "ours_fp32_whole": "genrec beam search (fp32, whole search compiled: --compile)",
              "hf_generate": "transformers generate + prefix_allowed_tokens_fn (fp32)"}
    for name, label in labels.items():
        if name in result:
            ax.plot([int(x) for x in result[name]], list(result[name].values()), marker="o", label=label)
    ax.axhline(10 * result["best_throughput_req_per_s"]["hf_generate"], color="grey", linestyle=":",
               label="10x the baseline's best")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("requests per batch")
    ax.set_ylabel("throughput (requests / s)")
    speedups = result["speedup_at_best_batch"]
    ax.set_title(f"TIGER decoding, beam {result['beam']}, top-{result['k']}, 2-core CPU: fastest mode "
                 f"{speedups[result['fastest']]}x the baseline's best", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
