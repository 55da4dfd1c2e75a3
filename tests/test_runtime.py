"""`genrec.runtime`: the compiled decoding paths give eager's results, in one graph each."""

from __future__ import annotations

import copy
import time
import warnings

import numpy as np
import torch

from genrec.decoding.beam_search import constrained_beam_search
from genrec.decoding.steppers import CausalStepper, TigerStepper
from genrec.decoding.trie_torch import TorchTrie
from genrec.models.causal import CausalConfig, CausalLM
from genrec.models.tiger import Tiger, TigerConfig
from genrec.models.vocab import SemanticVocab
from genrec.runtime import bf16_is_native, compile_for_decoding, tune_allocator, usable_bf16
from genrec.semantic_ids.trie import PrefixTrie
from tests.decoding.test_beam_search import SIZES, prompts


def test_compiled_search_matches_eager_for_both_models():
    """fullgraph=True makes any graph break an error; batch 1 (which dynamo specialises), two
    other batch sizes and every decode position share the compiled functions."""
    vocab = SemanticVocab(SIZES, user_buckets=4)
    rng = np.random.default_rng(0)
    codes = np.array(sorted({tuple(rng.integers(0, s) for s in SIZES) for _ in range(40)}), dtype=np.int64)
    trie = TorchTrie(PrefixTrie.from_codes(codes, SIZES))
    torch.manual_seed(0)
    models = {"tiger": (Tiger(TigerConfig(vocab_size=vocab.size, d_model=32, num_heads=2, d_kv=16, d_ff=64,
                                          num_encoder_layers=1, num_decoder_layers=2)).eval(), TigerStepper),
              "causal": (CausalLM(CausalConfig(vocab_size=vocab.size, hidden_size=32, num_layers=2, num_heads=4,
                                               num_kv_heads=2, intermediate_size=64)).eval(), CausalStepper)}
    for kind, (model, stepper) in models.items():
        compiled = compile_for_decoding(copy.deepcopy(model), fullgraph=True)
        for batch in (1, 3, 5):
            histories = [rng.integers(0, len(codes), size=rng.integers(2, 5)).tolist() for _ in range(batch)]
            ids, mask = prompts(vocab, codes, histories, left_pad=(kind == "causal"))
            eager, fast = (constrained_beam_search(stepper(m, vocab, ids, mask), trie, beam=6, k=4, n_items=len(codes),
                                                   exclude=histories) for m in (model, compiled))
            assert torch.equal(eager.items, fast.items), kind
            torch.testing.assert_close(fast.scores, eager.scores, atol=1e-5, rtol=0)


def test_compiled_prefix_cache_prefill_matches_eager():
    """`extend` (the prefix cache's prefill) compiles in one graph per class — no past, and a
    past with one or more new tokens — and continues a cached prefix as the full prompt would."""
    torch.manual_seed(0)
    model = CausalLM(CausalConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                                  intermediate_size=64)).eval()
    compiled = compile_for_decoding(copy.deepcopy(model), fullgraph=True)
    ids = torch.randint(2, 50, (1, 11))
    with torch.no_grad():
        full_logits, full_kv, _ = model.extend(ids)
        for m in (model, compiled):
            logits, kv, _ = m.extend(ids)
            torch.testing.assert_close(logits, full_logits, atol=1e-5, rtol=0)
            for cached in (8, 10):   # 3 new tokens, then 1
                past = [(k[..., :cached, :].contiguous(), v[..., :cached, :].contiguous()) for k, v in full_kv]
                logits, kv, _ = m.extend(ids[:, cached:], past_kv=past)
                torch.testing.assert_close(logits, full_logits, atol=1e-5, rtol=0)
                torch.testing.assert_close(kv[-1][0], full_kv[-1][0], atol=1e-5, rtol=0)


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
