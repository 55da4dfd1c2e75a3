"""The cold-start copy: held-out items vanish from training, come back through `ids add`, and
form the `cold` evaluation split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genrec.data.cold_start import make_cold_start
from genrec.data.dataset import load_dataset
from genrec.evaluation.harness import evaluate, seen_items
from genrec.evaluation.recommenders import ModelRecommender
from genrec.semantic_ids.build import IdsConfig, add_items, build_ids


def test_cold_start_copy_end_to_end(synth_ids, tmp_path):
    from genrec.training.loop import train
    from genrec.training.run import load_run
    from tests.training.test_train import tiny_config

    source = load_dataset(synth_ids)
    out = tmp_path / "cold"
    summary = make_cold_start(synth_ids, out, fraction=0.1, seed=3)
    held_ids = set(pd.read_parquet(out / "cold_items.parquet")["item_id"].astype(str))
    test = source.examples("test")
    held = min(round(0.1 * source.num_items), test["target"].nunique())   # drawn among test targets
    assert summary["held_out_items"] == len(held_ids) == held
    source_ids = source.items["item_id"].astype(str).to_numpy()
    assert summary["cold_examples"] == sum(source_ids[t] in held_ids for t in test["target"])

    copy = load_dataset(out)
    assert copy.num_items == source.num_items - held
    assert copy.items["item_idx"].tolist() == list(range(copy.num_items))
    assert not held_ids & set(copy.items["item_id"].astype(str))
    removed = sum(source_ids[i] in held_ids for i in source.interactions["item_idx"])
    assert summary["removed_interactions"] == removed
    assert len(copy.interactions) == len(source.interactions) - removed
    # Every remaining event, history and target points at the same item as before, by id.
    kept = source.interactions[[source_ids[i] not in held_ids for i in source.interactions["item_idx"]]]
    copy_ids = copy.items["item_id"].astype(str).to_numpy()
    assert (copy_ids[copy.interactions["item_idx"]] == source_ids[kept["item_idx"]]).all()
    for split in ("valid", "test"):
        frame = copy.examples(split)
        assert all(copy_ids[t] not in held_ids for t in frame["target"])

    # Semantic IDs without the held-out items, then theirs from text alone.
    build_ids(out, IdsConfig(levels=2, codebook_size=16), log=lambda _: None)
    add_items(out, pd.read_parquet(out / "cold_items.parquet"), log=lambda _: None)
    cold = load_dataset(out).examples("cold")
    assert len(cold) == summary["cold_examples"] and (cold["target"] >= copy.num_items).all()

    train(out, tmp_path / "tiger", tiny_config("tiger", max_steps=4), log=lambda _: None)
    loaded = load_run(tmp_path / "tiger")
    result = evaluate(ModelRecommender(loaded), loaded.dataset, "cold", ks=(10, 20))
    assert len(result.per_user) == len(cold) and 0 <= result.metrics["recall@20"] <= 1
    seen = seen_items(loaded.dataset, "cold")
    for _, row in result.per_user.iterrows():
        assert not set(np.asarray(row["items"]).tolist()) & set(seen.get(row["user_idx"], np.zeros(0)).tolist())

    # TIGER's protocol: the last 2 of 10 places go to the best new items, found through a trie
    # of the new items only (so beams are never spent on prefixes that lead elsewhere).
    from genrec.evaluation.harness import evaluate_new_item_slots

    new_items = set(loaded.dataset.items.loc[loaded.dataset.items["cold_start"], "item_idx"].tolist())
    slotted = evaluate_new_item_slots(ModelRecommender(loaded), loaded.dataset, "cold", ks=(10,), share=0.2)
    for items in slotted.per_user["items"]:
        assert set(items[-2:].tolist()) <= new_items and len(set(items.tolist())) == 10
    assert slotted.metrics["new_item_share"] == 0.2 and "recall@10" in slotted.metrics


def test_trie_over_part_of_a_catalog_maps_back_to_item_indices():
    from genrec.semantic_ids.trie import PrefixTrie

    codes = np.array([[0, 1], [2, 0], [0, 0], [1, 1]])
    sub = PrefixTrie.from_codes(codes[[3, 0]], (3, 2), item_ids=np.array([3, 0]))
    assert sub.lookup(np.array([[1, 1], [0, 1], [2, 0]])).tolist() == [3, 0, -1]
