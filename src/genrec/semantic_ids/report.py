"""How good are the codes? Codebook utilization per level, collisions before de-duplication,
and the items-per-prefix histogram, as JSON and a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def code_report(codes: np.ndarray, codebook_sizes: tuple[int, ...], collision_level: bool = True) -> dict:
    """`codes` are the final (items, depth) codes; with `collision_level` the last column is the
    de-duplication level and collisions are measured on the columns before it."""
    n, depth = codes.shape
    semantic = codes[:, :-1] if collision_level else codes
    _, group_sizes = np.unique(semantic, axis=0, return_counts=True)
    levels = []
    for level in range(depth):
        used = int(len(np.unique(codes[:, level])))
        levels.append({"level": level, "capacity": int(codebook_sizes[level]), "used": used,
                       "utilization": used / codebook_sizes[level],
                       "collision_level": collision_level and level == depth - 1})
    hist_values, hist_counts = np.unique(group_sizes, return_counts=True)
    return {
        "items": int(n),
        "depth": int(depth),
        "levels": levels,
        "unique_prefixes": int(len(group_sizes)),
        # Share of items that cannot be told apart without the extra level (TIGER's measure).
        "collision_rate": float(1 - len(group_sizes) / n) if n else 0.0,
        "items_in_collisions": float(group_sizes[group_sizes > 1].sum() / n) if n else 0.0,
        "max_items_per_prefix": int(group_sizes.max()) if n else 0,
        "items_per_prefix_histogram": {int(v): int(c) for v, c in zip(hist_values, hist_counts)},
    }


def plot_report(report: dict, path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    levels = report["levels"]
    names = [f"{chr(97 + l['level'])}" + (" (collision)" if l["collision_level"] else "") for l in levels]
    util = [100 * l["utilization"] for l in levels]
    bars = left.bar(names, util, color=["#4C72B0"] * (len(levels) - 1) + ["#999999"])
    for bar, lv in zip(bars, levels):
        left.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 1,
                  f"{lv['used']}/{lv['capacity']}", ha="center", fontsize=9)
    left.set_ylim(0, 110)
    left.set_ylabel("codes used (% of codebook)")
    left.set_xlabel("level")
    left.set_title("Codebook utilization per level")

    hist = {int(k): int(v) for k, v in report["items_per_prefix_histogram"].items()}
    sizes = np.array(sorted(hist), dtype=int)
    prefixes = np.array([hist[s] for s in sizes])
    right.bar(sizes, prefixes * sizes, color="#DD8452", width=0.8)
    right.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("items sharing a semantic prefix (collision group size)")
    right.set_ylabel("items (log scale)")
    right.set_title(f"Items per prefix: collision rate {100 * report['collision_rate']:.1f}%, "
                    f"max {report['max_items_per_prefix']}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
