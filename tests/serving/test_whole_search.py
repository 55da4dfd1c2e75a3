"""The whole search in one call (`serving/whole_search.py`), for tiger and causal: compiled, and as
the CUDA-graph buckets run uncaptured on the CPU — the same top-k as the ordinary search, on real
MovieLens-100K users."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrec.serving.whole_search import WholeSearch
from genrec.serving.history import dataset_histories, user_index
from genrec.serving.runner import ModelRunner, Request, RunnerConfig
from genrec.training.run import load_run
from tests.serving.test_app import _same_top


def _requests(loaded, count: int, seed: int) -> list[Request]:
    """Real users with their history excluded, and the odd cases: an allow-list with one of its
    items excluded, a small k, no exclusions, a one-item prompt."""
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    users = sorted(np.random.default_rng(seed).choice(sorted(histories), count, replace=False).tolist())
    requests = [Request(index[u], histories[u], k=10, exclude=histories[u]) for u in users]
    requests[1].include_only = tuple(histories[users[2]][:30]) + (0, 1, 2)
    requests[1].exclude = requests[1].exclude + [0]
    requests[4].k, requests[5].exclude = 3, None
    requests[6].history = histories[users[6]][:1]
    return requests


def _assert_same(batch, expected, got):
    for request, (items_a, scores_a), (items_b, scores_b) in zip(batch, expected, got):
        assert len(items_a) == request.k
        assert _same_top(items_a.tolist(), scores_a.tolist(), items_b.tolist())
        np.testing.assert_allclose(scores_b, scores_a, atol=1e-5, rtol=0)
        if request.include_only is not None:
            assert set(items_b.tolist()) <= set(request.include_only) - {0}


RUNS = ["tiger_run", "causal_ml100k_run"]


@pytest.mark.parametrize("run_fixture", RUNS)
def test_compiled_whole_search_equals_the_ordinary_runner_never_recompiles_and_restarts_from_disk(
        run_fixture, request, tmp_path, monkeypatch):
    """--compile: start-up compiles a batch of 1 and a dynamic batch; any size and any filters
    after that reuse them (a recompile is an error here), whatever autocast state the caller is in
    (dynamo guards on it: a bf16 runner calls under autocast, start-up did not, and its first
    batch recompiled). The traces are saved: a second runner (a restart) loads them, traces
    nothing, and answers alike, also without recompiling."""
    from torch._dynamo.utils import counters

    monkeypatch.setenv("GENREC_TRACE_CACHE_DIR", str(tmp_path))   # empty: the first runner traces
    run = request.getfixturevalue(run_fixture)
    ordinary = ModelRunner(load_run(run))
    requests = _requests(ordinary.loaded, 30, seed=2)
    for start in ("fresh", "restart"):
        counters.clear()
        compiled = ModelRunner(load_run(run), RunnerConfig(compile=True))
        assert compiled.whole_search is not None and not compiled.whole_search.buckets
        if start == "fresh":
            assert counters["dynamo_cache"]["dynamo_cache_miss"] == 1 and counters["stats"]["unique_graphs"] == 2
        else:
            assert counters["dynamo_cache"]["dynamo_cache_hit"] == 1 and not counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for lo, size in ((0, 1), (1, 3), (4, 7), (11, 2), (13, 17)):
                batch = requests[lo:lo + size]
                _assert_same(batch, ordinary.run(batch), compiled.run(batch))
            with torch.autocast("cpu", dtype=torch.bfloat16):   # as a bf16 runner calls it
                compiled.whole_search.run([0, 1], [[0, 1], [2]])


@pytest.mark.parametrize("run_fixture", RUNS)
def test_graphed_runner_equals_the_ordinary_runner(run_fixture, request):
    run = request.getfixturevalue(run_fixture)
    ordinary = ModelRunner(load_run(run))
    graphed = ModelRunner(load_run(run), RunnerConfig(cuda_graphs=True))
    whole = graphed.whole_search
    assert [b.size for b in whole.buckets] == [1, 2, 4, 8, 16, 32, 64, 128]
    whole.buckets = whole.buckets[:3]   # up to 4 requests a batch: larger ones are split
    chunks = []
    search = whole._search
    whole._search = lambda ids, mask, item_ok: chunks.append(len(ids)) or search(ids, mask, item_ok)
    requests = _requests(ordinary.loaded, 60, seed=1)
    compared = 0
    for lo, size in ((0, 1), (1, 3), (4, 7), (11, 49)):
        batch = requests[lo:lo + size]
        _assert_same(batch, ordinary.run(batch), graphed.run(batch))
        compared += len(batch)
    assert compared == 60
    assert chunks == [1, 4, 4, 4] + [4] * 12 + [1]   # buckets for 1; 3; 7 = 4 + 3; 49 = 12 x 4 + 1


def test_requests_wider_than_the_beam_take_the_ordinary_search(tiger_run):
    runner = ModelRunner(load_run(tiger_run), RunnerConfig(beam=5, cuda_graphs=True))
    loaded = runner.loaded
    histories, index = dataset_histories(loaded.dataset), user_index(loaded.dataset)
    user = sorted(histories)[0]
    wide = Request(index[user], histories[user], k=12)   # its group key is 12, the graphs' beam 5
    items, _ = runner.run([wide])[0]
    assert len(items) == 12
    assert runner.group_key(wide) != runner.whole_search.beam


def test_graphs_are_for_generative_models_without_compile_or_prefix_cache(tiger_run):
    with pytest.raises(ValueError, match="alternatives"):
        RunnerConfig(cuda_graphs=True, compile=True)
    with pytest.raises(ValueError, match="prefix cache"):
        RunnerConfig(cuda_graphs=True, prefix_cache_blocks=64)
    loaded = load_run(tiger_run)
    loaded.kind = "sasrec"
    with pytest.raises(ValueError, match="tiger and causal"):
        WholeSearch(loaded, loaded.trie, beam=20, device=torch.device("cpu"), mode="cuda_graphs")
