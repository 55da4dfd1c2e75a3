"""`genrec.runtime`: the compiled decoding pieces give eager's results without graph breaks; bf16 only
where matmuls have bf16 kernels."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.utils import clear_compilation_metrics, get_compilation_metrics

from genrec.decoding.beam_search import constrained_beam_search
from genrec.decoding.steppers import TigerStepper
from genrec.decoding.trie_torch import TorchTrie
from genrec.models.tiger import Tiger, TigerConfig
from genrec.models.vocab import SemanticVocab
from genrec.runtime import (bf16_is_native, compile_for_decoding, retrace_as_kept, traces_kept_on_disk, tune_allocator,
                            usable_bf16)
from genrec.semantic_ids.trie import PrefixTrie
from tests.decoding.test_beam_search import SIZES, prompts


def test_compiled_tiger_search_matches_eager():
    """The per-piece compile (what --compile runs for tiger when its trie is too large for the
    whole-search path): fullgraph=True makes any graph break an error; two batch sizes and every
    decode position share the compiled functions. Batch 1, which dynamo specialises (doubling the
    graphs, 2 min of this test on a 2-core AVX2 CPU), and the start-up walk over every class are
    checked on causal's per-piece compile as served, with the prefix cache
    (tests/serving/test_prefix_cache.py). Under no_grad, as served: with grad the encoder would be
    compiled with its backward, and the decode steps again for inputs that require grad."""
    vocab = SemanticVocab(SIZES, user_buckets=4)
    rng = np.random.default_rng(0)
    codes = np.array(sorted({tuple(rng.integers(0, s) for s in SIZES) for _ in range(40)}), dtype=np.int64)
    trie = TorchTrie(PrefixTrie.from_codes(codes, SIZES))
    torch.manual_seed(0)
    model = Tiger(TigerConfig(vocab_size=vocab.size, d_model=32, num_heads=2, d_kv=16, d_ff=64,
                              num_encoder_layers=1, num_decoder_layers=2)).eval()
    compiled = compile_for_decoding(copy.deepcopy(model), fullgraph=True)
    clear_compilation_metrics()
    with torch.no_grad():
        for batch in (3, 5):
            histories = [rng.integers(0, len(codes), size=rng.integers(2, 5)).tolist() for _ in range(batch)]
            ids, mask = prompts(vocab, codes, histories, left_pad=False)
            eager, fast = (constrained_beam_search(TigerStepper(m, vocab, ids, mask), trie, beam=6, k=4,
                                                   n_items=len(codes), exclude=histories) for m in (model, compiled))
            assert torch.equal(eager.items, fast.items)
            torch.testing.assert_close(fast.scores, eager.scores, atol=1e-5, rtol=0)
    assert [m.restart_reasons for m in get_compilation_metrics() if m.restart_reasons] == []   # no trace restarted


def test_saved_traces_do_not_clash_with_a_new_trace_in_a_later_process(tmp_path):
    """Where a saved package's guards fail (a model whose sizes its scope did not capture), dynamo
    traces afresh in a process where the package installed globals named by the process that saved
    it; torch 2.13 names them from a per-process counter starting at 0, so the new trace's first
    name clashed with the package's and start-up failed ("Name '__builtins_dict___0' already exists
    in scope", measured with two tiger runs in one scope). `traces_kept_on_disk` starts the counter
    elsewhere in each process: two processes must name their first global differently."""
    script = ("import torch._dynamo.bytecode_transformation as names\n"
              "from genrec.runtime import traces_kept_on_disk\n"
              "with traces_kept_on_disk('scope'):\n"
              "    print(names.unique_id('__builtins_dict__'))")
    env = {**os.environ, "GENREC_TRACE_CACHE_DIR": str(tmp_path)}
    first, second = (subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                     check=True).stdout.strip() for _ in range(2))
    assert first.startswith("__builtins_dict___") and first != second


def test_traces_that_cannot_be_saved_warn_and_the_compiled_function_still_runs(tmp_path, monkeypatch):
    """Saving is a cache: a directory that cannot be written (here: under a regular file) costs the
    next start its traces, not this start its model."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GENREC_TRACE_CACHE_DIR", str(blocker / "traces"))
    scale = torch.nn.Linear(4, 1, bias=False)
    torch.nn.init.ones_(scale.weight)
    with pytest.warns(RuntimeWarning, match="could not save the compiled traces"):
        with traces_kept_on_disk("unwritable"), torch.no_grad():
            forward = torch.compile(scale.forward, fullgraph=True)
            assert forward(torch.arange(4.0)).tolist() == [6.0]
    with torch.no_grad():
        assert forward(torch.ones(4)).tolist() == [4.0]


def test_a_class_traced_after_the_kept_block_compiles_within_retrace_as_kept(tmp_path, monkeypatch):
    """A call of a class the start-up walk missed traces anew after `traces_kept_on_disk`. torch
    2.13 fails such a trace out of the block, and again at every later call of the class; within
    `retrace_as_kept` (around every batch of a compiled runner) it compiles once and gives eager's
    result, and is not saved by a later block. Overlapping calls (engine threads) keep the flag
    until the last one leaves."""
    monkeypatch.setenv("GENREC_TRACE_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    project = torch.nn.Linear(8, 8)

    def extend(x, past=None):
        y = project(x)
        return y if past is None else torch.cat([past, y], 1)

    x, past = torch.randn(1, 7, 8), torch.randn(1, 2, 8)
    with torch.no_grad():
        with traces_kept_on_disk("retrace"):
            compiled = torch.compile(extend, dynamic=True)
            compiled(torch.randn(2, 3, 8))          # the one class start-up compiled
        for _ in range(2):                          # the torch bug, each time the new class is called
            with pytest.raises(AssertionError, match="guards_state must not be None"):
                compiled(x, past)
        with retrace_as_kept():
            assert torch.equal(compiled(x, past), extend(x, past))
        assert torch.equal(compiled(x, past), extend(x, past))   # traced once: nothing new to trace
        with traces_kept_on_disk("later"):          # a later block saves only what it traces itself
            pass
    assert not list(tmp_path.glob("genrec-later/*"))
    with retrace_as_kept():
        with retrace_as_kept():
            pass
        assert torch._dynamo.config.caching_precompile        # the outer call still traces as kept
    assert not torch._dynamo.config.caching_precompile


def test_tune_allocator_is_idempotent():
    assert tune_allocator() == tune_allocator()


def _matmul_seconds(dtype: torch.dtype, n: int = 256, repeats: int = 5) -> float:
    """Median time of an n x n product on one thread (two threads time their wake-ups as much)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return sorted(times)[repeats // 2]
    finally:
        torch.set_num_threads(threads)


def test_bf16_is_native_where_bf16_matmuls_are_not_many_times_slower():
    # What the flag stands for, measured: without bf16 kernels (an AVX2-only CPU) a bf16 matmul
    # runs 20-50x slower than fp32; with them (oneDNN on AVX-512) within a small factor.
    slowdown = _matmul_seconds(torch.bfloat16) / _matmul_seconds(torch.float32)
    assert (slowdown < 8) == bf16_is_native("cpu"), slowdown


def test_usable_bf16_falls_back_to_fp32_with_a_warning_only_without_bf16_kernels():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert usable_bf16(False) is False
        assert not caught
        assert usable_bf16(True) is bf16_is_native("cpu")
    assert [str(w.message).startswith("bf16 was asked for") for w in caught] == ([] if bf16_is_native("cpu") else [True])
