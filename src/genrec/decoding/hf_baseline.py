"""What a user would otherwise run: `transformers` generate with `prefix_allowed_tokens_fn`.

Used as the identity oracle in tests and as the baseline in benchmarks (same weights, same
inputs). Always `do_sample=False`: newer checkpoints and defaults may turn sampling on, which
silently returns the same item in every beam.
"""

from __future__ import annotations

import numpy as np
import torch

from genrec.models.vocab import SemanticVocab
from genrec.semantic_ids.trie import PrefixTrie


def prefix_allowed_tokens_fn(trie: PrefixTrie, vocab: SemanticVocab, prompt_len: int):
    """The per-beam Python callback: walk the trie along the tokens generated so far."""
    offsets = vocab.level_offsets

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        generated = sent[prompt_len:].tolist()
        level = len(generated)
        if level >= trie.depth:
            return [vocab.user_offset]  # past the ID: anything; generation stops by length anyway
        node = 0
        for depth, token in enumerate(generated):
            codes, children = trie.children(depth, node)
            hit = np.flatnonzero(codes == token - offsets[depth])
            if not len(hit):
                return []
            node = int(children[hit[0]])
        codes, _ = trie.children(level, node)
        return (codes + offsets[level]).tolist()

    return allowed


@torch.no_grad()
def hf_generate_topk(hf_model, input_ids: torch.Tensor, attention_mask: torch.Tensor, trie: PrefixTrie,
                     vocab: SemanticVocab, beam: int, k: int, encoder_decoder: bool = True):
    """Top-k items and summed log-probabilities from `generate`, as (items, scores) tensors."""
    prompt_len = 1 if encoder_decoder else input_ids.shape[1]  # T5 starts from the decoder start token
    out = hf_model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=beam,
                            num_return_sequences=k, max_new_tokens=trie.depth, min_new_tokens=trie.depth,
                            do_sample=False, early_stopping=True, length_penalty=0.0,
                            output_scores=True, return_dict_in_generate=True,
                            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, vocab, prompt_len))
    tokens = out.sequences[:, prompt_len:prompt_len + trie.depth].cpu().numpy()
    codes = tokens - vocab.level_offsets
    items = trie.lookup(codes).reshape(input_ids.shape[0], k)
    scores = out.sequences_scores.view(input_ids.shape[0], k)  # length_penalty 0: plain sums
    return torch.as_tensor(items), scores
