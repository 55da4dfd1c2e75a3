"""Prefix cache: a history grown by one item reuses the cached prompt KV and gives the same
recommendations as a full prefill."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from genrec.decoding.recommend import recommend_batch
from genrec.serving.prefix_cache import PrefixCache
from genrec.serving.runner import ModelRunner, Request, RunnerConfig, window_start
from genrec.training.loop import train
from genrec.training.run import load_run
from tests.training.test_train import TINY, tiny_config


def test_chain_keys_name_the_whole_prefix_and_evict_lru():
    cache = PrefixCache(block_size=4, max_blocks=3)
    a, b = list(range(12)), [99] + list(range(1, 12))
    assert len(cache.keys(a)) == 3 and len(cache.keys(a + [1, 2])) == 3
    assert cache.keys(a)[2] != cache.keys(b)[2]          # same third block, different prefix
    kv = [(torch.arange(12.0).view(1, 1, 12, 1), -torch.arange(12.0).view(1, 1, 12, 1))]
    cache.insert(a, kv)
    n, past = cache.lookup(a + [5])
    assert n == 12 and torch.equal(past[0][0], kv[0][0]) and torch.equal(past[0][1], kv[0][1])
    assert cache.lookup(a)[0] == 8                        # the last token is always prefilled
    assert cache.lookup(b)[0] == 0
    cache.insert(b, kv)                                   # 3 new blocks evict a's 3
    assert len(cache) == 3 and cache.lookup(a + [5])[0] == 0


@pytest.fixture(scope="module")
def causal_run(synth_ids, tmp_path_factory):
    """A tiny causal run with a 30-item window and, as the bundled config, 2 key/value heads: a
    size of 2 that a batch of 2 can be mistaken for when compiling (see the compile test)."""
    run = tmp_path_factory.mktemp("prefix") / "causal"
    train(synth_ids, run, tiny_config("causal", max_history=30,
                                      model_args={**TINY["causal"], "num_heads": 4, "num_kv_heads": 2}),
          log=lambda _: None)
    return run


@given(limit=st.integers(1, 60), stride=st.integers(1, 60), length=st.integers(0, 400))
def test_window_start_moves_in_strides(limit, stride, length):
    stride = min(stride, limit)
    start = window_start(length, limit, stride)
    if length <= limit:
        assert start == 0
        return
    assert start % stride == 0 and limit - stride < length - start <= limit
    if stride == 1:
        assert start == length - limit                      # the last `limit` items
    grown = window_start(length + 1, limit, stride)
    assert grown in (start, start + stride)                 # a visit keeps the start or moves it one stride
    assert window_start(length + stride, limit, stride) == start + stride   # kept for exactly `stride` visits


def test_grown_history_hits_the_cache_and_matches_full_prefill(causal_run):
    loaded = load_run(causal_run)
    cached = ModelRunner(loaded, RunnerConfig(prefix_cache_blocks=256, prefix_block_size=8))
    plain = ModelRunner(loaded, RunnerConfig())
    rng = np.random.default_rng(0)
    n = loaded.dataset.num_items
    histories = [list(rng.integers(0, n, int(rng.integers(12, 21)))) for _ in range(9)]
    first = [Request(u, h, k=10, exclude=h) for u, h in enumerate(histories[:6])]
    grown = [Request(u, h + [int(rng.integers(0, n))], k=10, exclude=h) for u, h in enumerate(histories[:6])]
    # Hits and misses in one batch: prefilled as two batches, merged back in the requests' order.
    mixed = [Request(u, histories[u], k=10) for u in (6, 0, 7)] + [grown[1], Request(8, histories[8], k=10)]
    for batch in (first, grown, mixed):
        for (items, scores), (items_ref, scores_ref) in zip(cached.run(batch), plain.run(batch)):
            np.testing.assert_allclose(scores, scores_ref, atol=1e-5)
            assert list(items) == list(items_ref)
    cache = cached.prefix_cache
    assert cache.lookups == 17 and cache.hits == 6 + 2
    first_len = [1 + len(h) * loaded.table.depth for h in histories]   # user token + the items' codes
    assert cache.hit_tokens == sum(first_len[u] // 8 * 8 for u in range(6)) + (first_len[0] - 1) // 8 * 8 + (
        (first_len[1] + loaded.table.depth - 1) // 8 * 8)


def test_full_window_with_a_stride_hits_the_cache_and_still_excludes_the_whole_history(causal_run):
    """A history past the 30-item window: with window_stride 8, growing by one item keeps the
    prompt's start (cache hits) for 8 visits; results equal the runner without the cache and a
    prefill of the windowed history that excludes the whole history. Stride 1 misses every time."""
    loaded = load_run(causal_run)
    rng = np.random.default_rng(2)
    history = [int(x) for x in rng.integers(0, loaded.dataset.num_items, 46)]   # visits see its first 41..46
    with pytest.raises(ValueError, match="window_stride"):
        ModelRunner(loaded, RunnerConfig(window_stride=31))
    for stride, hits in ((8, 5), (1, 0)):   # 41..46 items: windows start at 16 for 41..46 (stride 8)
        cached = ModelRunner(loaded, RunnerConfig(prefix_cache_blocks=256, prefix_block_size=8, window_stride=stride))
        plain = ModelRunner(loaded, RunnerConfig(window_stride=stride))
        for n in range(41, 47):
            grown = history[:n]
            request = Request(3, grown, k=10, exclude=grown)
            (items, scores), = cached.run([request])
            (items_ref, scores_ref), = plain.run([request])
            assert list(items) == list(items_ref)
            np.testing.assert_allclose(scores, scores_ref, atol=1e-5)
            window = grown[window_start(n, 30, stride):]
            assert len(window) == (30 if stride == 1 else n - 16)
            alone, _ = recommend_batch(loaded.model, "causal", loaded.data, loaded.trie, [3], [window], k=10,
                                       exclude_history=False, exclude=[grown])
            assert list(items) == list(alone[0][alone[0] >= 0]) and not set(items) & set(grown)
        assert cached.prefix_cache.hits == hits


def test_compiled_runner_compiles_every_class_at_start_and_a_restart_reuses_the_traces(
        causal_run, tmp_path, monkeypatch):
    """With --compile, start-up walks every graph a request can need — decode levels for 1 and 2
    requests and beams, and the prefix cache's prefills (a miss, hits with 1 and more new tokens) —
    so no request waits for a compilation: afterwards any recompile is an error. No graph breaks
    either (serving compiles without fullgraph, where a break would silently run eager), and no
    trace restarted (a float read as a symbolic input did, 13-21 s per prefill graph). The traces
    are saved: a second runner (a restart) loads them and traces nothing, with the same results."""
    from torch._dynamo.utils import clear_compilation_metrics, counters, get_compilation_metrics

    # saved traces live in inductor's cache directory; an empty one here, so that this test traces
    # whatever ran before it on this machine (inductor's kernels stay cached)
    monkeypatch.setenv("GENREC_TRACE_CACHE_DIR", str(tmp_path))
    config = RunnerConfig(prefix_cache_blocks=256, prefix_block_size=8, compile=True)
    plain = ModelRunner(load_run(causal_run), RunnerConfig())
    n = plain.loaded.dataset.num_items

    def same_as_plain(compiled):
        rng = np.random.default_rng(1)
        histories = [list(rng.integers(0, n, int(rng.integers(3, 20)))) for _ in range(6)]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for batch in ([0], [1, 2], [3, 4, 5], [0, 1, 2, 3, 4, 5]):
                for grown in (False, True):   # first visits (misses), then one more item each (hits)
                    requests = [Request(u, histories[u] + ([int(rng.integers(0, n))] if grown else []), k=5)
                                for u in batch]
                    if grown:
                        for r in requests:
                            histories[r.user_idx] = r.history
                    for (items, _), (items_ref, _) in zip(compiled.run(requests), plain.run(requests)):
                        assert list(items) == list(items_ref)
        assert compiled.prefix_cache.hits > 0

    counters.clear()
    clear_compilation_metrics()
    same_as_plain(ModelRunner(load_run(causal_run), config))
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]
    assert [m.restart_reasons for m in get_compilation_metrics() if m.restart_reasons] == []
    assert counters["dynamo_cache"]["dynamo_cache_miss"] == 2 and not counters["dynamo_cache"]["dynamo_cache_hit"]
    (scope,) = tmp_path.iterdir()
    assert len(list(scope.iterdir())) == 2                        # the prefill's and the decode step's

    counters.clear()
    same_as_plain(ModelRunner(load_run(causal_run), config))
    assert counters["dynamo_cache"]["dynamo_cache_hit"] == 2 and not counters["stats"]["unique_graphs"]
