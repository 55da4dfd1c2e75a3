"""Shared helpers for the benchmarks: ML-100K with semantic IDs, the matmul peak, medians."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from genrec.runtime import matmul_peak_flops  # noqa: F401  (re-exported for the benchmarks)


def ml100k_with_ids(root: Path) -> Path:
    """benchmarks/out/ml-100k (prepared, with 3 x 256 RQ-KMeans IDs), built on first use."""
    data = root / "ml-100k"
    if not (data / "ids" / "config.json").exists():
        from genrec.data.movielens import load_ml100k_recbole
        from genrec.data.prepare import PrepareConfig, prepare
        from genrec.semantic_ids.build import IdsConfig, build_ids

        prepare(load_ml100k_recbole(), PrepareConfig(), data, overwrite=True)
        build_ids(data, IdsConfig(), log=lambda _: None)
    return data


def median_time(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
