"""The evaluation harness end to end: baselines on real MovieLens-100K, trained runs through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from genrec.data.dataset import load_dataset
from genrec.evaluation.harness import list_metrics, seen_items
from genrec.evaluation.recommenders import BaselineConfig, ItemKNN
from tests.conftest import run_cli


def test_list_metrics_hand_made():
    lists = np.array([[0, 1, -1], [1, 2, 3]])
    popularity = np.array([0.0, 0.5, 1.0, 0.25, 0.75])
    m = list_metrics(lists, num_items=5, popularity=popularity, ks=[2, 3])
    assert m["coverage@2"] == 3 / 5 and m["coverage@3"] == 4 / 5
    assert math.isclose(m["popularity@2"], (0.0 + 0.5 + 0.5 + 1.0) / 4)
    assert math.isclose(m["popularity@3"], (0.0 + 0.5 + 0.5 + 1.0 + 0.25) / 5)


def test_pop_baseline_on_ml100k(ml100k_dir, tmp_path):
    run = tmp_path / "pop"
    run_cli("baseline", "--data", ml100k_dir, "--model", "pop", "--out", run)
    summary = json.loads((run / "metrics-test.json").read_text())
    assert summary["split"] == "test" and summary["users"] == 943 and summary["model"] == "pop"
    per_user = pd.read_parquet(run / "per_user-test.parquet")
    assert len(per_user) == 943
    assert math.isclose(summary["metrics"]["recall@10"], float((per_user["rank"] < 10).mean()))
    assert math.isclose(summary["metrics"]["ndcg@10"],
                        float(np.where(per_user["rank"] < 10, 1 / np.log2(per_user["rank"] + 2), 0).mean()))
    # MostPop by hand: training counts, the user's whole known history (train + valid) removed.
    dataset = load_dataset(ml100k_dir)
    inter = dataset.interactions
    counts = inter[inter["split"] == "train"]["item_idx"].value_counts()
    counts = counts.reindex(range(dataset.num_items), fill_value=0)
    order = sorted(range(dataset.num_items), key=lambda i: (-counts[i], i))
    seen = seen_items(dataset, "test")
    assert len(seen[0]) == len(inter[inter["user_idx"] == 0]) - 1          # all but the test item
    for _, row in per_user.iloc[:5].iterrows():
        expected = [i for i in order if i not in set(seen[row["user_idx"]].tolist())][:20]
        assert list(row["items"]) == expected


def test_itemknn_is_shrunk_cosine(synth_ids):
    dataset = load_dataset(synth_ids)
    knn = ItemKNN.fit(dataset, BaselineConfig(model="itemknn", neighbours=5, shrink=10.0))
    train = dataset.interactions[dataset.interactions["split"] == "train"]
    users_of = train.groupby("item_idx")["user_idx"].apply(set)
    item = int(train["item_idx"].value_counts().index[0])
    for other, sim in zip(knn.neighbours[item], knn.similarities[item]):
        a, b = users_of[item], users_of.get(other, set())
        assert math.isclose(sim, len(a & b) / (math.sqrt(len(a) * len(b)) + 10.0), rel_tol=1e-5)
    assert list(knn.similarities[item]) == sorted(knn.similarities[item], reverse=True)
    seen = [np.array([item, 3])]
    top = knn.recommend(np.array([0]), [np.array([item])], seen, 10)[0]
    assert item not in top and 3 not in top and len(set(top.tolist())) == 10


def test_evaluate_trained_runs_through_the_cli(synth_ids, tmp_path):
    from genrec.training.loop import train
    from tests.training.test_train import tiny_config

    runs = []
    for model in ("tiger", "sasrec"):
        train(synth_ids, tmp_path / model, tiny_config(model, max_steps=6), log=lambda _: None)
        runs.append(tmp_path / model)
    result = run_cli("evaluate", "--run", runs[0], "--run", runs[1], "--split", "valid", "--k", "5,10,20")
    assert "R@10" in result.stdout and "tiger" in result.stdout and "sasrec" in result.stdout
    dataset = load_dataset(synth_ids)
    seen = seen_items(dataset, "valid")
    for run in runs:
        summary = json.loads((run / "metrics-valid.json").read_text())
        m = summary["metrics"]
        assert summary["users"] == len(dataset.examples("valid")) and summary["ks"] == [5, 10, 20]
        assert m["recall@5"] <= m["recall@10"] <= m["recall@20"] and 0 < m["coverage@10"] <= 1
        per_user = pd.read_parquet(run / "per_user-valid.parquet")
        for _, row in per_user.iterrows():       # never an item the user already had
            items = [i for i in row["items"] if i >= 0]
            assert len(items) == 20 and not set(items) & set(seen[row["user_idx"]].tolist())
    bad = run_cli("evaluate", "--run", runs[0], "--split", "train", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --split must be valid, test or cold, got 'train'"
