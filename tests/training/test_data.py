"""Training windows of the decoder-only models: fixed, and shifted at random per epoch."""

from __future__ import annotations

import pytest

from genrec.data.dataset import load_dataset
from genrec.semantic_ids.build import load_ids
from genrec.training.data import SequenceData


@pytest.fixture(scope="module")
def data(synth_ids):
    return SequenceData(load_dataset(synth_ids), "causal", 10, load_ids(synth_ids).table)


def covered(data) -> set[tuple[int, int]]:
    """(user, position) of every target transition inside some window."""
    return {(int(u), t) for u, s, e in data.examples for t in range(s + 1, e)}


def test_fixed_windows_tile_each_history_from_its_end(data):
    every = {(u, t) for u, seq in enumerate(data.train) for t in range(1, len(seq))}
    assert covered(data) == every
    for u, s, e in data.examples:
        assert e - s - 1 <= 10
    ends = {}
    for u, s, e in data.examples:
        ends.setdefault(int(u), []).append(int(e))
    assert all(v == list(range(len(data.train[u]), 1, -10)) for u, v in ends.items())


def test_random_windows_cover_every_transition_and_differ_by_seed(data):
    every = covered(data)
    fixed = {tuple(r) for r in data.examples.tolist()}
    seen = []
    for seed in (1, 2):
        data.new_epoch(seed, random_windows=True)
        assert covered(data) == every                      # nothing skipped in any epoch
        assert all(e - s - 1 <= 10 for _, s, e in data.examples)
        last = {int(u): int(e) for u, _, e in data.examples if e == len(data.train[u])}
        assert len(last) == len(data.train)                # the most recent window always there
        seen.append({tuple(r) for r in data.examples.tolist()})
    assert seen[0] != seen[1] and seen[0] != fixed
    data.new_epoch(1, random_windows=True)
    assert {tuple(r) for r in data.examples.tolist()} == seen[0]  # seeded
    data.new_epoch(3, random_windows=False)
    assert {tuple(r) for r in data.examples.tolist()} == fixed
