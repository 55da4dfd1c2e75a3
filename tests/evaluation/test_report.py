"""`write_report` on tiny hand-made runs: exact table cells, significance marks, valid PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from genrec.errors import GenrecError
from genrec.evaluation.metrics import per_user_metrics
from genrec.evaluation.report import write_report
from genrec.semantic_ids.table import SemanticIdTable

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INF = math.inf


def make_run(root: Path, name: str, model: str, ranks: dict[int, float], metrics: dict[str, float],
             data_dir: Path | None = None, logs: bool = False) -> Path:
    """A run directory as `genrec evaluate` leaves it; `metrics` are the hand-computed means of `ranks`."""
    run = root / name
    run.mkdir()
    users = list(ranks)
    (run / "metrics-test.json").write_text(json.dumps({
        "split": "test", "users": len(users), "model": model, "run": str(run), "ks": [1, 5, 10, 20],
        "metrics": metrics, "seconds": 1.0}))
    pd.DataFrame({"user_idx": np.array(users, dtype=np.int64), "target": np.arange(len(users), dtype=np.int64),
                  "rank": np.array([ranks[u] for u in users], dtype=np.float64),
                  "items": [np.arange(20, dtype=np.int64) for _ in users]}).to_parquet(run / "per_user-test.parquet")
    if data_dir is not None:
        (run / "config.json").write_text(json.dumps({"model": model, "data_dir": str(data_dir)}))
    if logs:
        steps = np.arange(0, 1000, 100)
        pd.DataFrame({"step": steps, "recall@1": 0.01, "recall@5": 0.03, "recall@10": 0.05, "ndcg@5": 0.02,
                      "ndcg@10": np.linspace(0.01, 0.05, len(steps)), "mrr": 0.02}).to_csv(run / "valid_log.csv",
                                                                                         index=False)
        pd.DataFrame({"step": steps, "seconds": steps * 0.6, "lr": 1e-3, "loss": np.linspace(6.0, 3.0, len(steps)),
                      "tokens_per_s": 5000.0}).to_csv(run / "train_log.csv", index=False)
    return run


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    """Reference: 50 users, even ones at rank 12 (only Recall@20 hits). `better`: users 0-39 at rank 0.
    `worse`: users 0-29 only (shuffled), just 0, 2, 4 at rank 12; no coverage/popularity keys."""
    data_dir = tmp_path / "data"
    (data_dir / "ids").mkdir(parents=True)
    codes = np.stack([np.arange(40) % 4, np.arange(40) % 3, np.arange(40) // 12], axis=1)
    SemanticIdTable(codes, (8, 8, 4)).save(data_dir / "ids" / "semantic_ids.safetensors")
    root = tmp_path / "runs"
    root.mkdir()
    reference = make_run(root, "pop", "popularity", {u: 12.0 if u % 2 == 0 else INF for u in range(50)},
                         {"recall@5": 0.0, "ndcg@5": 0.0, "recall@10": 0.0, "ndcg@10": 0.0, "recall@20": 0.5,
                          "ndcg@20": 0.5 / math.log2(14), "mrr": 0.5 / 13, "coverage@10": 0.05,
                          "popularity@10": 0.97})
    better = make_run(root, "tiger-run", "tiger", {u: 0.0 if u < 40 else INF for u in range(50)},
                      {f"{m}@{k}": 0.8 for m in ("recall", "ndcg") for k in (5, 10, 20)}
                      | {"mrr": 0.8, "coverage@10": 0.1, "popularity@10": 0.6}, data_dir=data_dir, logs=True)
    order = np.random.default_rng(0).permutation(30)
    worse = make_run(root, "worse", "sasrec", {int(u): 12.0 if u in (0, 2, 4) else INF for u in order},
                     {"recall@5": 0.0, "ndcg@5": 0.0, "recall@10": 0.0, "ndcg@10": 0.0, "recall@20": 0.1,
                      "ndcg@20": 0.1 / math.log2(14), "mrr": 0.1 / 13})
    return [reference, better, worse]


def rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by run name -> cells after the name."""
    out = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| Run"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_per_user_metrics_from_ranks():
    m = per_user_metrics(np.array([0.0, 4.0, 9.0, 19.0, INF]))
    assert m["recall@5"].tolist() == [1, 1, 0, 0, 0]
    assert m["recall@20"].tolist() == [1, 1, 1, 1, 0]
    assert np.allclose(m["ndcg@10"], [1, 1 / math.log2(6), 1 / math.log2(11), 0, 0])
    assert np.allclose(m["mrr"], [1, 1 / 5, 1 / 10, 1 / 20, 0])


def test_report_table_marks_and_figures(runs, tmp_path):
    out = tmp_path / "report"
    path = write_report(runs, "test", out)
    assert path == out / "report.md"
    text = path.read_text()
    table = rows(text)
    header = next(line for line in text.splitlines() if line.startswith("| Run"))
    assert header == ("| Run | Model | Recall@5 | Recall@10 | Recall@20 | NDCG@5 | NDCG@10 | NDCG@20 | MRR "
                      "| Coverage@10 | Pop@10 | Users |")
    # reference: Recall@20 = 25/50, NDCG@20 = 0.5 / log2(14) = 0.13133, MRR = 0.5 / 13 = 0.03846; never marked
    assert table["pop"] == ["popularity", "0.0000", "0.0000", "0.5000", "0.0000", "0.0000", "0.1313", "0.0385",
                            "0.0500", "0.9700", "50"]
    # 40 of 50 users move from a miss (or rank 12) to rank 0: best everywhere and significantly better
    assert table["tiger-run"] == ["tiger"] + ["**0.8000** ▲"] * 7 + ["**0.1000**", "0.6000", "50"]
    # on the 30 shared users, 12 even users lose their rank-12 hit: worse at Recall@20, NDCG@20, MRR;
    # Recall/NDCG@5/10 are 0 for both runs, so no mark; missing keys show as a dash
    assert table["worse"] == ["sasrec", "0.0000", "0.0000", "0.1000 ▼", "0.0000", "0.0000", "0.0263 ▼",
                              "0.0077 ▼", "–", "–", "30"]
    assert "paired randomization" in text and "p < 0.05" in text and "How to read this" in text
    for name in ("metrics.png", "curves.png", "codebook_usage.png"):
        assert f"]({name})" in text
        assert_png(out / name)


def test_runs_without_logs_or_ids_give_no_curves(runs, tmp_path):
    out = tmp_path / "report"
    write_report([runs[0], runs[2]], "test", out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.png", "report.md"]
    assert "curves.png" not in (out / "report.md").read_text()
    assert_png(out / "metrics.png")


def test_missing_split_is_a_user_error(runs, tmp_path):
    with pytest.raises(GenrecError, match="metrics-valid.json"):
        write_report(runs, "valid", tmp_path / "report")
