"""Semantic IDs at scale: 1,000,000 random 384-d items -> 3 x 256 RQ-KMeans levels + collision
level + CSR trie, timed and measured for peak RSS in a fresh process; plus the real text
encoder's throughput and the embedding cache's second-run time.

    python benchmarks/ids_scale.py [--items 1000000] [--encode-items 2000] [--out benchmarks/out]

Prints one JSON object and writes it to OUT/ids_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def scale_part(n_items: int, dim: int, levels: int, codebook: int) -> dict:
    import numpy as np

    from genrec.semantic_ids.report import code_report
    from genrec.semantic_ids.rqkmeans import RQKMeans, RQKMeansConfig
    from genrec.semantic_ids.table import SemanticIdTable, add_collision_level

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_items, dim), dtype=np.float32)
    generated = time.perf_counter()
    rq = RQKMeans(RQKMeansConfig(levels=levels, codebook_size=codebook))
    semantic = rq.fit(vectors, in_place=True)  # the vectors become the final residuals
    quantized = time.perf_counter()
    del vectors
    codes = add_collision_level(semantic, capacity=codebook)
    table = SemanticIdTable(codes, (codebook,) * levels + (codebook,))
    trie = table.trie
    built = time.perf_counter()
    report = code_report(codes, table.codebook_sizes)
    # Spot-check: every item is found again through the trie.
    sample = rng.choice(n_items, size=min(n_items, 100_000), replace=False)
    assert (trie.lookup(codes[sample]) == sample).all()
    return {
        "items": n_items, "dim": dim, "levels": levels, "codebook": codebook,
        "generate_s": round(generated - started, 2),
        "quantize_s": round(quantized - generated, 2),
        "dedupe_and_trie_s": round(built - quantized, 2),
        "wall_s_excluding_data_generation": round(built - generated, 2),
        "wall_s_total": round(built - started, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "trie_mib": round(trie.nbytes / 2**20, 1),
        "trie_dense_depths": sorted(trie.dense),
        "collision_rate": round(report["collision_rate"], 4),
        "max_items_per_prefix": report["max_items_per_prefix"],
        "utilization": [round(lv["utilization"], 3) for lv in report["levels"]],
    }


def encode_part(n_texts: int, repeats: int = 3) -> dict:
    import statistics

    import torch

    from genrec.data.synth import SynthConfig, synth
    from genrec.semantic_ids.encoder import EncoderConfig, TextEncoder

    texts = synth(SynthConfig(items=n_texts, users=1, seed=1)).items["text"].tolist()
    out: dict = {"texts": len(texts), "repeats": repeats, "items_per_s_by_threads": {}}
    with tempfile.TemporaryDirectory() as cache:
        os.environ["GENREC_CACHE_DIR"] = cache
        encoder = TextEncoder(EncoderConfig(use_cache=False))
        encoder.model  # load outside the timed region
        # Thread counts side by side, interleaved, median of `repeats` (2-thread runs were at
        # times slower than 1-thread ones on these machines).
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(repeats):
            for threads in times:
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                encoder.encode(texts, progress=False)
                times[threads].append(time.perf_counter() - t0)
        for threads, values in times.items():
            out["items_per_s_by_threads"][threads] = round(len(texts) / statistics.median(values), 1)
        torch.set_num_threads(2)
        cached = TextEncoder(EncoderConfig())
        t0 = time.perf_counter()
        cached.encode(texts, progress=False)
        out["first_run_with_cache_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        TextEncoder(EncoderConfig()).encode(texts, progress=False)  # fresh encoder: cache only
        out["cached_second_run_s"] = round(time.perf_counter() - t0, 3)
    return out


def run_part(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(result.returncode)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook", type=int, default=256)
    parser.add_argument("--encode-items", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--part", choices=["scale", "encode"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "scale":
        print(json.dumps(scale_part(args.items, args.dim, args.levels, args.codebook)))
        return
    if args.part == "encode":
        print(json.dumps(encode_part(args.encode_items)))
        return
    # Each part in its own process so peak RSS belongs to that part alone.
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "scale": run_part(["--part", "scale", "--items", str(args.items), "--dim", str(args.dim),
                           "--levels", str(args.levels), "--codebook", str(args.codebook)]),
        "encoder": run_part(["--part", "encode", "--encode-items", str(args.encode_items)]) if args.encode_items else None,
        "targets": {"wall_s": 90, "peak_rss_gib": 4, "trie_mib": 64},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ids_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
