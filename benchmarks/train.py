"""Training throughput of the three models on ML-100K: tokens/s and MFU against the measured
matmul peak, bf16 autocast vs fp32, 1 vs 2 threads, side by side in one run.

    python benchmarks/train.py [--batch-size 64] [--steps 4]

Tokens are the tokens a step processes (TIGER: encoder + decoder tokens; causal: sequence tokens;
SASRec: sequence positions). FLOPs per step = 6 x (parameters acting on a token) x tokens, plus
the output projection over the vocabulary (over all items for SASRec's full softmax).
Prints JSON and writes OUT/train.json and OUT/train.png.
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

from common import matmul_peak_flops, ml100k_with_ids


def step_flops(kind: str, model, batch: dict) -> float:
    lin = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    if kind == "tiger":
        enc_tokens = int(batch["attention_mask"].sum())
        dec_tokens = batch["decoder_input_ids"].numel()
        c = model.config
        return 6 * (lin(model.encoder_layers) * enc_tokens + lin(model.decoder_layers) * dec_tokens
                    + c.d_model * c.vocab_size * dec_tokens)
    if kind == "causal":
        tokens = int(batch["attention_mask"].sum())
        c = model.config
        return 6 * (lin(model.layers) * tokens + c.hidden_size * c.vocab_size * tokens)
    tokens = int((batch["tokens"] > 0).sum())
    c = model.config
    return 6 * (lin([model.blocks]) * tokens + c.hidden_size * c.num_items * tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()

    from genrec.data.dataset import load_dataset
    from genrec.models.factory import build_model, loss_fn, model_config
    from genrec.semantic_ids.build import load_ids
    from genrec.training.data import SequenceData

    data_dir = ml100k_with_ids(args.out)
    dataset, table = load_dataset(data_dir), load_ids(data_dir).table
    from genrec.runtime import bf16_is_native

    # bf16 only where matmuls have bf16 kernels: on an AVX2-only CPU it runs 20-50x slower than fp32.
    precisions = ("fp32", "bf16") if bf16_is_native("cpu") else ("fp32",)
    peaks = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peaks[threads] = {p: matmul_peak_flops(dtype=torch.bfloat16 if p == "bf16" else None) for p in precisions}
    rows = []
    for kind in ("tiger", "causal", "sasrec"):
        data = SequenceData(dataset, kind, 20 if kind == "tiger" else 50, table if kind != "sasrec" else None,
                            user_buckets=2000)
        torch.manual_seed(0)
        model = build_model(kind, model_config(kind, {}, data.vocab.size if data.vocab else 0, dataset.num_items,
                                               data.max_history))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rng = np.random.default_rng(0)
        batches = [data.batch(rng.choice(len(data), args.batch_size, replace=False)) for _ in range(args.steps + 1)]
        flops = statistics.mean(step_flops(kind, model, b.tensors) for b in batches)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for precision in precisions:
                times = []
                for i, batch in enumerate(batches):
                    t0 = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        loss = loss_fn(kind, model, batch.tensors)
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if i:  # the first step warms up
                        times.append(time.perf_counter() - t0)
                seconds = statistics.median(times)
                n_tokens = _tokens(kind, batches[0].tensors)
                rows.append({"model": kind, "threads": threads, "precision": precision,
                             "step_s": round(seconds, 3), "tokens_per_s": round(n_tokens / seconds, 1),
                             "target_tokens_per_s": round(batches[0].tokens / seconds, 1),
                             "gflops_per_step": round(flops / 1e9, 2),
                             "mfu": round(flops / seconds / peaks[threads][precision], 3)})
                print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
              "batch_size": args.batch_size,
              "matmul_peak_gflops": {t: {p: round(v / 1e9, 1) for p, v in d.items()} for t, d in peaks.items()},
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    plot(rows, args.out / "train.png")


def _tokens(kind: str, batch: dict) -> int:
    if kind == "tiger":
        return int(batch["attention_mask"].sum()) + batch["decoder_input_ids"].numel()
    if kind == "causal":
        return int(batch["attention_mask"].sum())
    return int((batch["tokens"] > 0).sum())


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    configs = [(t, p) for t in (1, 2) for p in ("fp32", "bf16") if any(r["precision"] == p for r in rows)]
    width = 0.8 / len(configs)
    models = ["tiger", "causal", "sasrec"]
    for i, (t, p) in enumerate(configs):
        values = [next(r["tokens_per_s"] for r in rows if r["model"] == m and r["threads"] == t and r["precision"] == p)
                  for m in models]
        ax.bar(np.arange(len(models)) + (i - (len(configs) - 1) / 2) * width, values, width, label=f"{t} thread{'s' if t > 1 else ''}, {p}")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("training tokens / s")
    ax.set_title("Training throughput on ML-100K (2-core CPU)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
