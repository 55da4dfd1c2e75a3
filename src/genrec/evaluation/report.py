"""A Markdown comparison of evaluated runs, with figures: `write_report(runs, split, out)`.

A table of means alone invites over-reading small gaps, so every run is tested against the first
one (the reference) on the users both evaluated, with a paired randomization test on per-user
metrics recomputed from the saved target ranks; only differences that pass are marked. Figures use
matplotlib's object API (`Figure`, rendered by Agg), which touches no global pyplot state.
"""

from __future__ import annotations

import io
import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from genrec.errors import GenrecError
from genrec.evaluation.metrics import per_user_metrics
from genrec.evaluation.significance import paired_randomization_test
from genrec.files import atomic_write_bytes

ALPHA = 0.05
RESAMPLES = 10000
DPI = 110
UP, DOWN = "▲", "▼"

# (header, key in metrics-<split>.json, whether the highest value is the best one to bold)
COLUMNS = [("Recall@5", "recall@5", True), ("Recall@10", "recall@10", True), ("Recall@20", "recall@20", True),
           ("NDCG@5", "ndcg@5", True), ("NDCG@10", "ndcg@10", True), ("NDCG@20", "ndcg@20", True),
           ("MRR", "mrr", True), ("Coverage@10", "coverage@10", True), ("Pop@10", "popularity@10", False)]
BAR_METRICS = [("Recall@10", "recall@10"), ("NDCG@10", "ndcg@10"), ("Recall@20", "recall@20"),
               ("NDCG@20", "ndcg@20"), ("MRR", "mrr")]


@dataclass
class _Run:
    path: Path
    summary: dict            # metrics-<split>.json
    per_user: pd.DataFrame   # user_idx, rank

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        return f"{self.name} ({self.summary.get('model', '?')})"

    @property
    def metrics(self) -> dict[str, float]:
        return self.summary.get("metrics", {})

    @property
    def users(self) -> int:
        return int(self.summary.get("users", len(self.per_user)))


def write_report(runs: list[Path], split: str, out: Path) -> Path:
    """Write out/report.md and its PNGs comparing `runs` (the first is the reference); return the .md path."""
    if not runs:
        raise GenrecError("no runs to report on")
    loaded = [_load(Path(run), split) for run in runs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = {"metrics.png": _metrics_figure(loaded, split)}
    curves = _curves_figure([run.path for run in loaded])
    if curves is not None:
        figures["curves.png"] = curves
    usage = _codebook_figure([run.path for run in loaded])
    if usage is not None:
        figures["codebook_usage.png"] = usage
    for name, fig in figures.items():
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        atomic_write_bytes(out / name, buffer.getvalue())
    path = out / "report.md"
    atomic_write_bytes(path, _markdown(loaded, split, list(figures)).encode())
    return path


def _load(run: Path, split: str) -> _Run:
    metrics, per_user = run / f"metrics-{split}.json", run / f"per_user-{split}.parquet"
    for path in (metrics, per_user):
        if not path.exists():
            raise GenrecError(f"{path} not found; run `genrec evaluate` (or `genrec baseline`) on the {split} split")
    return _Run(run, json.loads(metrics.read_text()), pd.read_parquet(per_user, columns=["user_idx", "rank"]))


def _significance_marks(runs: list[_Run]) -> dict[tuple[int, str], str]:
    """(run index, metric key) -> ▲/▼ where that run differs from the reference at p < ALPHA."""
    reference = runs[0].per_user
    marks = {}
    for i, run in enumerate(runs[1:], start=1):
        both = reference.merge(run.per_user, on="user_idx", suffixes=("_ref", "_run"))
        if both.empty:
            continue
        ref, other = (per_user_metrics(both[c].to_numpy(), ks=(5, 10, 20)) for c in ("rank_ref", "rank_run"))
        for key in ref:
            p = paired_randomization_test(other[key], ref[key], n_resamples=RESAMPLES)
            if p < ALPHA:
                marks[i, key] = UP if other[key].mean() > ref[key].mean() else DOWN
    return marks


def _table(runs: list[_Run]) -> list[str]:
    columns = [c for c in COLUMNS if any(c[1] in run.metrics for run in runs)]
    marks = _significance_marks(runs)
    best = {}
    for _, key, has_best in columns:
        if has_best:
            best[key] = max(round(run.metrics[key], 4) for run in runs if key in run.metrics)
    lines = ["| Run | Model | " + " | ".join(c[0] for c in columns) + " | Users |",
             "|---|---|" + "---:|" * (len(columns) + 1)]
    for i, run in enumerate(runs):
        cells = [run.name, str(run.summary.get("model", "?"))]
        for _, key, _ in columns:
            if key not in run.metrics:
                cells.append("–")
                continue
            value = round(run.metrics[key], 4)
            cell = f"**{value:.4f}**" if best.get(key) == value else f"{value:.4f}"
            cells.append(f"{cell} {marks[i, key]}" if (i, key) in marks else cell)
        cells.append(str(run.users))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown(runs: list[_Run], split: str, figures: list[str]) -> str:
    reference = runs[0].name
    lines = [f"# Evaluation report: {split} split", "",
             f"{len(runs)} run(s); the reference for significance marks is **{reference}** (first row).", ""]
    lines += _table(runs)
    lines += ["",
              f"{UP} / {DOWN}: significantly better / worse than {reference} (two-sided paired randomization "
              f"test, {RESAMPLES:,} sign flips, p < {ALPHA}) on the users both runs evaluated, using per-user "
              "Recall, NDCG and reciprocal rank recomputed from the target's rank. No mark: no significant "
              "difference. Coverage and Pop are properties of the whole set of lists and are not tested. "
              "Each cell is tested on its own, without a multiple-comparison correction, so with many runs "
              "expect an occasional mark by chance. **Bold**: best value of the column (Pop@10 has no best).",
              "", "## How to read this", "",
              "Each user has one held-out item. Recall@K is the share of users whose held-out item is in the "
              "top K recommendations; NDCG@K also rewards placing it near the top (1 at rank 1, 1/log2(r+1) at "
              "rank r); MRR is the mean of 1/rank (0 when the item is absent from the list). Coverage@10 is "
              "the share of the catalog that appears in at least one top-10 list; Pop@10 is the mean popularity "
              "percentile of the recommended items (0 = least, 1 = most popular in training), so a low value "
              "means less popularity bias, not necessarily better recommendations. Gaps without a mark may be "
              "noise.", ""]
    captions = {"metrics.png": "Ranking quality per run",
                "curves.png": "Training curves: validation NDCG@10 by step, training loss by wall-clock time",
                "codebook_usage.png": "Semantic-ID codebook usage: items per code, most used first"}
    for name in figures:
        lines += [f"## {captions[name]}", "", f"![{captions[name]}]({name})", ""]
    return "\n".join(lines)


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(rows, cols, squeeze=False)


def _metrics_figure(runs: list[_Run], split: str):
    users = sorted({run.users for run in runs})
    user_text = f"{users[0]:,} users" if len(users) == 1 else f"{users[0]:,}–{users[-1]:,} users"
    fig, axes = _figure(max(8.0, 1.2 + 0.45 * len(runs) * len(BAR_METRICS)), 4.8)
    ax = axes[0, 0]
    x = np.arange(len(BAR_METRICS))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        values = [run.metrics.get(key, np.nan) for _, key in BAR_METRICS]
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=run.label, color=f"C{i}")
        ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "" for v in values], padding=2,
                     fontsize=8, rotation=90 if len(runs) > 3 else 0)
    ax.set_xticks(x, [label for label, _ in BAR_METRICS])
    ax.set_ylabel("mean over users (higher is better)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)  # room for the value labels
    ax.set_title(f"{split} split, {user_text}: leave-one-out full ranking")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="run (model)")
    ax.grid(axis="y", alpha=0.3)
    return fig


def _curves_figure(runs: list[Path]):
    """Validation NDCG@10 by step and training loss by time; None when no run was trained here.

    Run i keeps colour Ci, as in the bar chart, even when runs before it have no logs.
    """
    valid = {i: pd.read_csv(run / "valid_log.csv") for i, run in enumerate(runs) if (run / "valid_log.csv").exists()}
    if not valid:
        return None
    train = {i: pd.read_csv(run / "train_log.csv") for i, run in enumerate(runs) if (run / "train_log.csv").exists()}
    fig, axes = _figure(12, 4.5, 1, 2)
    left, right = axes[0]
    for i, log in valid.items():
        left.plot(log["step"], log["ndcg@10"], marker="o", markersize=3, label=runs[i].name, color=f"C{i}")
    left.set_xlabel("training step (optimizer updates)")
    left.set_ylabel("NDCG@10 on the valid split")
    left.set_title("Validation NDCG@10")
    for i, log in train.items():
        right.plot(log["seconds"] / 60, log["loss"], label=runs[i].name, color=f"C{i}")
    right.set_xlabel("training time (minutes)")
    right.set_ylabel("training loss (cross-entropy, nats)")
    right.set_title("Training loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=9)
    return fig


def _codebook_figure(runs: list[Path]):
    """Items per code at each semantic-ID level, one row per distinct ID table; None without IDs."""
    from matplotlib.ticker import FuncFormatter, NullFormatter
    from safetensors.numpy import load_file

    tables = []
    for run in runs:
        config = run / "config.json"
        if not config.exists() or "data_dir" not in (meta := json.loads(config.read_text())):
            continue
        ids = (Path(meta["data_dir"]) / "ids" / "semantic_ids.safetensors").resolve()
        if ids.exists() and ids not in tables:
            tables.append(ids)
    if not tables:
        return None
    loaded = [load_file(str(path)) for path in tables]
    depth = max(len(arrays["codebook_sizes"]) for arrays in loaded)
    fig, axes = _figure(3.6 * depth, 3.3 * len(loaded), len(loaded), depth)
    for row, (path, arrays) in enumerate(zip(tables, loaded)):
        codes, sizes = arrays["codes"], arrays["codebook_sizes"]
        for level in range(depth):
            ax = axes[row, level]
            if level >= len(sizes):
                ax.set_axis_off()
                continue
            counts = np.sort(np.bincount(codes[:, level], minlength=int(sizes[level])))[::-1]
            used = int((counts > 0).sum())
            ax.bar(np.arange(len(counts)), counts, width=1.0, color="#4C72B0")
            role = " (collision)" if level == len(sizes) - 1 else ""
            dataset = f"{path.parent.parent.name}\n" if len(tables) > 1 else ""
            ax.set_title(f"{dataset}level {string.ascii_lowercase[level]}{role}: "
                         f"{used}/{len(counts)} codes used ({used / len(counts):.0%})", fontsize=10)
            ax.set_yscale("log")  # usage is usually very skewed (the collision level most of all)
            ax.set_ylim(0.7, 1.5 * max(counts[0], 1))  # a code used by a single item still shows a bar
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("code, most used first")
            ax.set_ylabel("items with this code (log scale)")
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Semantic-ID codebook usage")
    fig.tight_layout()
    return fig
