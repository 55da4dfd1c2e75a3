"""Adapters that let one beam search drive each generative model.

A stepper is built once per batch of requests (it runs the encoder or the prompt prefill then)
and answers `step(prev_tokens, level)` with log-probabilities over that level's codebook for every
beam; `reorder(parents)` keeps each beam's few decode tokens in line after a top-k.
Scores are log-softmax over the *whole* vocabulary, restricted to the level's block afterwards —
the same numbers `transformers` generate uses, so both searches agree.
"""

from __future__ import annotations

import torch

from genrec.models.causal import CausalLM
from genrec.models.tiger import Tiger
from genrec.models.vocab import PAD, SemanticVocab


def _level_logprobs(logits: torch.Tensor, vocab: SemanticVocab, level: int) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)[..., vocab.level_slice(level)]


def _reorder(cache: list[list[torch.Tensor]], parents: torch.Tensor) -> None:
    """cache tensors are (B, beams, ...); pick rows `parents` (B, new_beams) along dim 1."""
    for layer in cache:
        for i, t in enumerate(layer):
            index = parents.view(*parents.shape, *([1] * (t.dim() - 2))).expand(*parents.shape, *t.shape[2:])
            layer[i] = torch.gather(t, 1, index)


class TigerStepper:
    def __init__(self, model: Tiger, vocab: SemanticVocab, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        self.model, self.vocab = model, vocab
        encoded = model.encode(input_ids, attention_mask)
        # Encoder keys/values once per request, read by all its beams (never copied per beam).
        self.cross = model.cross_kv(encoded)
        self.cross_bias = model._key_mask(attention_mask)
        self.cache: list[list[torch.Tensor]] = [[] for _ in model.decoder_layers]
        self.batch = input_ids.shape[0]

    def step(self, prev_tokens: torch.Tensor | None, level: int) -> torch.Tensor:
        if prev_tokens is None:  # first level: the decoder start token, one beam
            prev_tokens = torch.full((self.batch, 1), PAD, dtype=torch.long, device=self.cross_bias.device)
        logits = self.model.decode_step(prev_tokens, level, self.cross, self.cross_bias, self.cache)
        return _level_logprobs(logits, self.vocab, level)

    def reorder(self, parents: torch.Tensor) -> None:
        _reorder(self.cache, parents)


class CausalStepper:
    def __init__(self, model: CausalLM, vocab: SemanticVocab, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """input_ids: left-padded prompts (history tokens)."""
        self.model, self.vocab, self.mask = model, vocab, attention_mask
        self.batch = input_ids.shape[0]
        logits, self.prompt_kv = model(input_ids, attention_mask, return_kv=True)
        self.first = logits[:, -1:]                       # the prefill predicts level 0
        self.next_position = attention_mask.long().sum(-1)
        self.cache: list[list[torch.Tensor]] = [[] for _ in model.layers]

    def step(self, prev_tokens: torch.Tensor | None, level: int) -> torch.Tensor:
        if level == 0:
            return _level_logprobs(self.first, self.vocab, 0)
        logits = self.model.decode_step(prev_tokens, self.next_position + level - 1, self.prompt_kv,
                                        self.mask, self.cache)
        return _level_logprobs(logits, self.vocab, level)

    def reorder(self, parents: torch.Tensor) -> None:
        _reorder(self.cache, parents)
