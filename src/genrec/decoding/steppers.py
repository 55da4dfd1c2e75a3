"""Adapters that let one beam search drive each generative model.

A stepper is built once per batch of requests (it runs the encoder or the prompt prefill then)
and answers `step(prev_tokens, level)` with log-probabilities over that level's codebook for every
beam; `reorder(parents)` keeps each beam's few decode tokens in line after a top-k.
Scores are log-softmax over the *whole* vocabulary, restricted to the level's block afterwards —
the same numbers `transformers` generate uses, so both searches agree.
"""

from __future__ import annotations

import copy

import torch

from genrec.models.causal import CausalLM
from genrec.models.tiger import Tiger
from genrec.models.vocab import PAD, SemanticVocab


def _level_logprobs(logits: torch.Tensor, vocab: SemanticVocab, level: int) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32)[..., vocab.level_slice(level)]


class Stepper:
    """What beam search needs besides `step`: per layer a [k, v] cache of shape (B, beams, ...)."""

    cache: list[list[torch.Tensor]]
    per_request: tuple[str, ...] = ()  # attributes indexed by request: tensors or per-layer (k, v) lists

    def reorder(self, parents: torch.Tensor) -> None:
        """Keep cache rows `parents` (B, new_beams) of each request: one row copy over the
        flattened (B * beams) axis, cheaper than a gather with an expanded index."""
        batch, new_width = parents.shape
        for layer in self.cache:
            for i, t in enumerate(layer):
                rows = (parents + torch.arange(batch, device=parents.device)[:, None] * t.shape[1]).reshape(-1)
                layer[i] = t.flatten(0, 1).index_select(0, rows).view(batch, new_width, *t.shape[2:])

    def fork(self) -> list[list[torch.Tensor]]:
        """The cache as it is now, to `restore` after stepping a subset of beams."""
        return [list(layer) for layer in self.cache]

    def restore(self, saved: list[list[torch.Tensor]]) -> None:
        self.cache = [list(layer) for layer in saved]

    def subset(self, requests: torch.Tensor) -> "Stepper":
        """A stepper over some of the batch's requests (indices), sharing nothing mutable."""
        sub = copy.copy(self)
        sub.batch = len(requests)
        sub.cache = [[t[requests] for t in layer] for layer in self.cache]
        for name in self.per_request:
            value = getattr(self, name)
            setattr(sub, name, [tuple(t[requests] for t in kv) for kv in value] if isinstance(value, list)
                    else value[requests])
        return sub


class TigerStepper(Stepper):
    per_request = ("cross", "cross_bias")

    def __init__(self, model: Tiger, vocab: SemanticVocab, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        length = input_ids.shape[1]
        self._start(model, vocab, input_ids, model.encoder_bias(length, length), model._key_mask(attention_mask))

    @classmethod
    def from_biases(cls, model: Tiger, vocab: SemanticVocab, input_ids: torch.Tensor, position_bias: torch.Tensor,
                    key_mask: torch.Tensor) -> "TigerStepper":
        """A stepper whose encoder biases were made elsewhere: position_bias (1, H, S, S) from
        `model.encoder_bias`, key_mask (B, 1, 1, S) from `model._key_mask`. The whole-search path
        makes them outside its compiled function; made inside, inductor recomputed the position
        buckets and the mask's int-to-float conversion in every attention's softmax."""
        stepper = cls.__new__(cls)
        stepper._start(model, vocab, input_ids, position_bias, key_mask)
        return stepper

    def _start(self, model: Tiger, vocab: SemanticVocab, input_ids: torch.Tensor, position_bias: torch.Tensor,
               key_mask: torch.Tensor) -> None:
        self.model, self.vocab = model, vocab
        encoded = model.encode_layers(input_ids, position_bias, key_mask)
        # Encoder keys/values once per request, read by all its beams (never copied per beam).
        self.cross = model.cross_kv(encoded)
        self.cross_bias = key_mask
        self.cache: list[list[torch.Tensor]] = [[] for _ in model.decoder_layers]
        self.batch = input_ids.shape[0]

    def step(self, prev_tokens: torch.Tensor | None, level: int) -> torch.Tensor:
        if prev_tokens is None:  # first level: the decoder start token, one beam
            prev_tokens = torch.full((self.batch, 1), PAD, dtype=torch.long, device=self.cross_bias.device)
        return self.model.decode_step(prev_tokens, level, self.cross, self.cross_bias, self.cache,
                                      level=self.vocab.level_slice(level))


class CausalStepper(Stepper):
    per_request = ("prompt_kv", "mask", "first", "next_position")

    def __init__(self, model: CausalLM, vocab: SemanticVocab, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """input_ids: left-padded prompts (history tokens)."""
        self.model, self.vocab = model, vocab
        self._set_prompt(*model.extend(input_ids, attention_mask))

    def _set_prompt(self, first_logits: torch.Tensor, prompt_kv: list, attention_mask: torch.Tensor) -> None:
        self.first, self.prompt_kv, self.mask = first_logits, prompt_kv, attention_mask  # first: predicts level 0
        self.batch = attention_mask.shape[0]
        self.next_position = attention_mask.long().sum(-1)
        self.cache: list[list[torch.Tensor]] = [[] for _ in self.model.layers]

    @classmethod
    def from_prefill(cls, model: CausalLM, vocab: SemanticVocab, first_logits: torch.Tensor, prompt_kv: list,
                     attention_mask: torch.Tensor) -> "CausalStepper":
        """A stepper over prompts prefilled elsewhere (the prefix cache): first_logits (B, 1, V),
        prompt_kv per layer (k, v) of shape (B, Hkv, T, hd), padded where `attention_mask` is 0
        (before a prompt, and between a cached prefix and its new tokens)."""
        stepper = cls.__new__(cls)
        stepper.model, stepper.vocab = model, vocab
        stepper._set_prompt(first_logits, prompt_kv, attention_mask)
        return stepper

    def step(self, prev_tokens: torch.Tensor | None, level: int) -> torch.Tensor:
        if level == 0:
            return _level_logprobs(self.first, self.vocab, 0)
        return self.model.decode_step(prev_tokens, self.next_position + level - 1, self.prompt_kv,
                                      self.mask, self.cache, level=self.vocab.level_slice(level))
