"""Exhaustive reference decoding for small catalogs: score every valid item by teacher forcing
its semantic ID, then take the top-k. Slow and obviously right; the beam search must agree."""

from __future__ import annotations

import torch

from genrec.models.causal import CausalLM
from genrec.models.tiger import Tiger
from genrec.models.vocab import PAD, SemanticVocab


@torch.no_grad()
def tiger_item_scores(model: Tiger, vocab: SemanticVocab, item_tokens: torch.Tensor,
                      input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, n_items) summed log-probabilities of every item's tokens (item_tokens: (n_items, depth))."""
    encoded = model.encode(input_ids, attention_mask)
    n, depth = item_tokens.shape
    decoder_in = torch.cat([torch.full((n, 1), PAD, dtype=torch.long), item_tokens[:, :-1]], dim=1)
    out = torch.empty(input_ids.shape[0], n)
    for b in range(input_ids.shape[0]):
        logits = model.decode(decoder_in, encoded[b:b + 1].expand(n, -1, -1),
                              attention_mask[b:b + 1].expand(n, -1))
        logp = torch.log_softmax(logits.float(), dim=-1)
        out[b] = logp.gather(-1, item_tokens[..., None])[..., 0].sum(-1)
    return out


@torch.no_grad()
def causal_item_scores(model: CausalLM, vocab: SemanticVocab, item_tokens: torch.Tensor,
                       input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    n, depth = item_tokens.shape
    out = torch.empty(input_ids.shape[0], n)
    for b in range(input_ids.shape[0]):
        prompt = input_ids[b][attention_mask[b].bool()]
        full = torch.cat([prompt.expand(n, -1), item_tokens], dim=1)
        logp = torch.log_softmax(model(full).float(), dim=-1)
        predicted = logp[:, len(prompt) - 1: len(prompt) - 1 + depth]
        out[b] = predicted.gather(-1, item_tokens[..., None])[..., 0].sum(-1)
    return out


def exhaustive_topk(scores: torch.Tensor, k: int, exclude: list | None = None,
                    include_only: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    scores = scores.clone()
    for b in range(scores.shape[0]):
        if exclude is not None and len(exclude[b]):
            scores[b, torch.as_tensor(exclude[b], dtype=torch.long)] = -torch.inf
        if include_only is not None and include_only[b] is not None:
            keep = torch.zeros(scores.shape[1], dtype=torch.bool)
            keep[torch.as_tensor(include_only[b], dtype=torch.long)] = True
            scores[b, ~keep] = -torch.inf
    top, items = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    items = torch.where(torch.isinf(top), torch.full_like(items, -1), items)
    return items, top
