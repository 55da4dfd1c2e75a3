"""Trie-constrained beam search over semantic IDs.

Semantic IDs have a fixed length, so decoding is exactly `depth` steps. Per step: the model's
log-probabilities over the level's codebook for every beam, -inf where the trie forbids the code
(the child grid is gathered for all beams at once), one top-k over beam x codebook, then each
beam's small decode cache is reordered by parent. No Python loop over beams or trie nodes.
Exclusions (the user's history, deny/allow lists) are masks at the last level, where a trie child
is an item.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrec.decoding.trie_torch import TorchTrie


@dataclass
class BeamResult:
    items: torch.Tensor   # (B, k) item indices, -1 where fewer than k valid items exist
    scores: torch.Tensor  # (B, k) summed log-probabilities, sorted descending, -inf for padding


def _keys(rows: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    return rows * n_items + items


def item_filter(n_items: int, exclude: list | None, include_only: list | None, device=None):
    """Build a function (rows, items) -> allowed bool, from per-request item lists."""
    def sorted_keys(lists):
        lists = [x if x is not None else [] for x in lists]
        rows = [torch.full((len(x),), r, dtype=torch.long) for r, x in enumerate(lists)]
        items = [torch.as_tensor(x, dtype=torch.long).reshape(-1) for x in lists]
        if not rows:
            return torch.empty(0, dtype=torch.long, device=device)
        return torch.sort(_keys(torch.cat(rows), torch.cat(items), n_items))[0].to(device)

    def contains(keys, query):
        if keys.numel() == 0:
            return torch.zeros_like(query, dtype=torch.bool)
        pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
        return keys[pos] == query

    deny = sorted_keys(exclude) if exclude is not None else None
    allow = sorted_keys(include_only) if include_only is not None else None
    has_allow = None
    if include_only is not None:
        has_allow = torch.tensor([x is not None for x in include_only], device=device)

    def allowed(rows: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        ok = items >= 0
        query = _keys(rows, items.clamp(min=0), n_items)
        if deny is not None:
            ok &= ~contains(deny, query)
        if allow is not None:
            ok &= contains(allow, query) | ~has_allow[rows]
        return ok

    return allowed


@torch.no_grad()
def constrained_beam_search(stepper, trie: TorchTrie, beam: int, k: int, n_items: int,
                            exclude: list | None = None, include_only: list | None = None) -> BeamResult:
    """Top-`k` items for each request of `stepper`'s batch with `beam` beams.

    exclude / include_only: per request, a sequence of item indices (include_only entries may be
    None for "no restriction").
    """
    if k > beam:
        raise ValueError(f"k ({k}) cannot exceed the beam width ({beam})")
    batch = stepper.batch
    device = trie.offsets[0].device
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)       # the root, one beam
    scores = torch.zeros(batch, 1, device=device)
    prev = None
    allowed_items = None
    if exclude is not None or include_only is not None:
        allowed_items = item_filter(n_items, exclude, include_only, device)
    for level in range(trie.depth):
        logp = stepper.step(prev, level)                                  # (B, W, K)
        grid = trie.child_grid(level, nodes)                              # (B, W, K)
        valid = grid >= 0
        if level == trie.depth - 1 and allowed_items is not None:
            rows = torch.arange(batch, device=device)[:, None, None].expand_as(grid)
            valid &= allowed_items(rows, grid)
        total = torch.where(valid, scores[..., None] + logp, torch.full_like(logp, -torch.inf))
        width, codebook = total.shape[1], total.shape[2]
        top_scores, flat = torch.topk(total.view(batch, -1), min(beam, width * codebook), dim=1)
        parents = torch.div(flat, codebook, rounding_mode="floor")
        codes = flat % codebook
        nodes = torch.gather(grid.view(batch, -1), 1, flat)
        dead = torch.isinf(top_scores)
        nodes = torch.where(dead, torch.full_like(nodes, -1), nodes)
        scores = top_scores
        if level < trie.depth - 1:
            stepper.reorder(parents)
            prev = codes + int(stepper.vocab.level_offsets[level])        # token ids of the chosen codes
    items = nodes[:, :k]
    scores = scores[:, :k]
    if items.shape[1] < k:  # fewer candidates than k in the whole catalog
        pad = k - items.shape[1]
        items = torch.cat([items, torch.full((batch, pad), -1, dtype=items.dtype, device=device)], 1)
        scores = torch.cat([scores, torch.full((batch, pad), -torch.inf, device=device)], 1)
    return BeamResult(items=items, scores=scores)
