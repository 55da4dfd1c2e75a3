"""A PNG of a run's curves: training loss and validation Recall@10 / NDCG@10 against steps."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_curves(run: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_path, valid_path = run / "train_log.csv", run / "valid_log.csv"
    if not train_path.exists():
        return None
    train = pd.read_csv(train_path)
    valid = pd.read_csv(valid_path) if valid_path.exists() else pd.DataFrame()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(train["step"], train["loss"], color="#4C72B0")
    left.set_xlabel("optimizer step")
    left.set_ylabel("training loss (cross-entropy, nats)")
    left.set_title("Training loss")
    left.grid(alpha=0.3)
    if len(valid):
        right.plot(valid["step"], valid["recall@10"], marker="o", label="Recall@10")
        right.plot(valid["step"], valid["ndcg@10"], marker="s", label="NDCG@10")
        right.legend()
    right.set_xlabel("optimizer step")
    right.set_ylabel("metric on the valid split")
    right.set_title("Validation (full ranking, leave-one-out)")
    right.grid(alpha=0.3)
    kind = ""
    if (run / "config.json").exists():
        import json

        kind = f" ({json.loads((run / 'config.json').read_text()).get('model', '')})"
    fig.suptitle(f"{run.name}{kind}")
    fig.tight_layout()
    out = run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
