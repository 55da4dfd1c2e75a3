"""Our causal model against transformers' LlamaForCausalLM on the same weights."""

from __future__ import annotations

import pytest
import torch

from genrec.models.causal import CausalConfig, CausalLM, to_hf


def small_model(**overrides) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(CausalConfig(vocab_size=300, num_layers=2, **overrides)).eval()


def left_padded(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_same_logits_as_llama_for_causal_lm():
    for overrides in ({}, {"num_kv_heads": 4}, {"tie_word_embeddings": True}):
        model = small_model(**overrides)
        hf = to_hf(model)
        ids, mask = left_padded()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
            ours = model(ids, mask)
            fused = model.fuse_for_inference()(ids, mask)   # serving's stacked q/k/v and gate/up weights
        real = mask.bool()  # padded positions carry no meaning in either model
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=0)
        torch.testing.assert_close(fused[real], theirs[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fused", [False, True])   # fused: serving's q/k/v and gate/up matmuls
def test_decode_steps_match_a_full_pass(fused):
    model = small_model().fuse_for_inference() if fused else small_model()
    ids, mask = left_padded()
    beams, steps = 4, 3
    new = torch.randint(2, 300, (3, beams, steps), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, prompt_kv, _ = model.extend(ids, mask)
        cache = [[] for _ in model.layers]
        next_pos = mask.sum(-1)
        for t in range(steps):
            step = model.decode_step(new[:, :, t], next_pos + t, prompt_kv, mask, cache)
            for beam in range(beams):
                full_ids = torch.cat([ids, new[:, beam, : t + 1]], dim=1)
                full_mask = torch.cat([mask, torch.ones(3, t + 1, dtype=mask.dtype)], dim=1)
                expected = model(full_ids, full_mask)[:, -1]
                torch.testing.assert_close(step[:, beam], expected, atol=1e-4, rtol=0)
    assert cache[0][0].shape == (3, beams, 2, steps, 32)


def test_extend_continues_cached_prefixes_of_padded_rows_as_their_full_prompts():
    """The serving prefill: rows of different cached lengths and new-token counts, padded before
    their past and between past and new tokens, each give its full prompt's last logits and KV."""
    model = small_model().fuse_for_inference()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, 300, (1, n), generator=g) for n in (20, 13, 17)]
    cached = (16, 8, 16)   # new tokens: 4, 5, 1
    with torch.no_grad():
        full = [model.extend(ids) for ids in prompts]
        new = max(ids.shape[1] - c for ids, c in zip(prompts, cached))
        ids, mask = torch.zeros(3, new, dtype=torch.long), torch.zeros(3, new, dtype=torch.long)
        past_kv = [(torch.zeros(3, 2, 16, 32), torch.zeros(3, 2, 16, 32)) for _ in model.layers]
        past_mask = torch.zeros(3, 16, dtype=torch.long)
        for row, (prompt, c) in enumerate(zip(prompts, cached)):
            ids[row, new - (prompt.shape[1] - c):], mask[row, new - (prompt.shape[1] - c):] = prompt[0, c:], 1
            past_mask[row, 16 - c:] = 1
            for (k, v), (full_k, full_v) in zip(past_kv, full[row][1]):
                k[row, :, 16 - c:], v[row, :, 16 - c:] = full_k[0, :, :c], full_v[0, :, :c]
        logits, kv, kv_mask = model.extend(ids, mask, past_kv, past_mask)
        for row, (full_logits, full_kv, _) in enumerate(full):
            torch.testing.assert_close(logits[row], full_logits[0], atol=1e-5, rtol=0)
            real = kv_mask[row].bool()
            assert int(real.sum()) == prompts[row].shape[1]
            for (k, v), (full_k, full_v) in zip(kv, full_kv):
                torch.testing.assert_close(k[row][:, real], full_k[0], atol=1e-5, rtol=0)
                torch.testing.assert_close(v[row][:, real], full_v[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(full[0][0][0, 0], model(prompts[0])[0, -1], atol=1e-5, rtol=0)   # == forward


def test_embedding_and_attention_dropout_act_in_training_only():
    plain, regularised = small_model(), small_model(embedding_dropout=0.5, attention_dropout=0.5)
    ids, mask = left_padded()
    with torch.no_grad():
        assert torch.equal(plain(ids, mask), regularised(ids, mask))  # eval: the same weights, no dropout
        regularised.train()
        torch.manual_seed(3)
        noisy = regularised(ids, mask)
        assert not torch.allclose(noisy, plain(ids, mask))
