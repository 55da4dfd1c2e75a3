"""Synthetic data: deterministic, with topics in the text and sequels in the sequences."""

from __future__ import annotations

import numpy as np

from genrec.data.dataset import load_dataset
from genrec.data.synth import SynthConfig, synth
from tests.conftest import run_cli


def test_deterministic_and_structured():
    a, b = synth(SynthConfig(items=200, users=100, seed=3)), synth(SynthConfig(items=200, users=100, seed=3))
    assert np.array_equal(a.item_ids, b.item_ids) and a.items.equals(b.items)
    assert not np.array_equal(a.item_ids, synth(SynthConfig(items=200, users=100, seed=4)).item_ids)
    # Sequential structure: consecutive items share a topic far more often than chance.
    topic = dict(zip(a.items["item_id"], a.items["topic"]))
    same = [topic[x] == topic[y] for u, x, v, y in zip(a.user_ids, a.item_ids, a.user_ids[1:], a.item_ids[1:]) if u == v]
    assert np.mean(same) > 0.6
    assert all(t.split(" Category: ")[1].split(".")[0] == topic[i]
               for i, t in zip(a.items["item_id"], a.items["text"]))


def test_cli(tmp_path):
    out = run_cli("data", "synth", "--items", "300", "--users", "50", "--out", tmp_path / "s")
    assert "source rows" in out.stdout
    ds = load_dataset(tmp_path / "s")
    assert ds.num_users == 50 and ds.num_items <= 300 and len(ds.examples("test")) == 50
