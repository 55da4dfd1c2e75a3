"""Our TIGER beam search returns what `T5ForConditionalGeneration.generate` returns, with
`prefix_allowed_tokens_fn`, on the same weights: 100 random histories, beam 20, top 10."""

from __future__ import annotations

import numpy as np
import torch

from genrec.decoding.beam_search import constrained_beam_search
from genrec.decoding.hf_baseline import hf_generate_topk
from genrec.decoding.steppers import TigerStepper
from genrec.decoding.trie_torch import TorchTrie
from genrec.models.tiger import Tiger, TigerConfig, to_hf
from genrec.models.vocab import SemanticVocab
from genrec.semantic_ids.table import add_collision_level
from genrec.semantic_ids.trie import PrefixTrie


def test_top10_equals_transformers_generate():
    rng = np.random.default_rng(0)
    n_items, sizes = 600, (16, 16, 16, 8)
    codes = add_collision_level(rng.integers(0, 16, (n_items, 3)), capacity=8)
    vocab = SemanticVocab(sizes, user_buckets=10)
    torch.manual_seed(0)
    model = Tiger(TigerConfig(vocab_size=vocab.size, num_encoder_layers=2, num_decoder_layers=2)).eval()
    hf = to_hf(model)
    trie = PrefixTrie.from_codes(codes, sizes)
    torch_trie = TorchTrie(trie)
    compared = 0
    for batch in range(4):
        histories = [rng.integers(0, n_items, rng.integers(1, 21)) for _ in range(25)]
        tokens = [np.concatenate([[vocab.user_token(batch * 25 + i)], vocab.item_tokens(codes[h]).reshape(-1)])
                  for i, h in enumerate(histories)]
        width = max(len(t) for t in tokens)
        ids = torch.zeros(len(tokens), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(tokens):
            ids[i, : len(t)], mask[i, : len(t)] = torch.as_tensor(t), 1
        ours = constrained_beam_search(TigerStepper(model, vocab, ids, mask), torch_trie, beam=20, k=10,
                                       n_items=n_items)
        items, scores = hf_generate_topk(hf, ids, mask, trie, vocab, beam=20, k=10)
        torch.testing.assert_close(ours.scores, scores.float(), atol=1e-4, rtol=0)
        for b in range(len(tokens)):
            s = ours.scores[b]
            for j in range(10):
                near = [abs(s[j] - s[i]) < 1e-5 for i in range(10) if i != j]
                if not any(near):  # items whose scores tie within 1e-5 may swap places
                    assert ours.items[b, j] == items[b, j], (b, j)
            compared += 1
    assert compared == 100
