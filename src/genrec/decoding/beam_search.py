"""Trie-constrained beam search over semantic IDs.

Semantic IDs have a fixed length, so decoding is exactly `depth` steps. Per step: the model's
log-probabilities over the level's codebook for every beam, -inf where the trie forbids the code
(the child grid is gathered for all beams at once), one top-k over beam x codebook, then each
beam's small decode cache is reordered by parent. No Python loop over beams or trie nodes.
Exclusions (the user's history, deny/allow lists) are masks at every level: a prefix all of
whose items are excluded is never kept (`filters.prefix_filter`). The last level keeps only k
beams, which lets it skip beams that cannot reach them.

`fixed_shape_beam_search` is the same search with every shape fixed and no host sync: what the
serving path compiles, or captures as a CUDA graph, whole (`serving/whole_search.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrec.decoding.filters import item_filter, prefix_filter
from genrec.decoding.trie_torch import DenseTrie, TorchTrie

__all__ = ["BeamResult", "constrained_beam_search", "fixed_shape_beam_search", "item_filter"]


@dataclass
class BeamResult:
    items: torch.Tensor   # (B, k) item indices, -1 where fewer than k valid items exist
    scores: torch.Tensor  # (B, k) summed log-probabilities, sorted descending, -inf for padding


def _dense(tokens: torch.Tensor) -> torch.Tensor:
    """A copy with row-major strides. torch.compile guards on strides: a slice of the tokens (row
    stride 20 for 10 columns; `.contiguous()` keeps it for one row) would need a graph of its own,
    compiled while a request waits."""
    return tokens.clone(memory_format=torch.contiguous_format)


def _best(total: torch.Tensor, grid: torch.Tensor, width: int):
    """The `width` best children over all beams of each request: (nodes, -1 where the score is
    -inf; scores; flat index beam * codebook + code)."""
    batch = total.shape[0]
    top_scores, flat = torch.topk(total.view(batch, -1), min(width, total[0].numel()), dim=1)
    nodes = torch.gather(grid.view(batch, -1), 1, flat)
    return torch.where(torch.isinf(top_scores), torch.full_like(nodes, -1), nodes), top_scores, flat


def _advance(stepper, flat: torch.Tensor, codebook: int, level: int) -> torch.Tensor:
    """Keep the chosen beams' decode caches (parent = flat // codebook); returns the token ids of
    the chosen codes, the next step's input."""
    stepper.reorder(torch.div(flat, codebook, rounding_mode="floor"))
    return flat % codebook + stepper.vocab.level_start(level)


@torch.no_grad()
def constrained_beam_search(stepper, trie: TorchTrie, beam: int, k: int, n_items: int,
                            exclude: list | None = None, include_only: list | None = None) -> BeamResult:
    """Top-`k` items for each request of `stepper`'s batch with `beam` beams.

    exclude / include_only: per request, a sequence of item indices (include_only entries may be
    None for "no restriction").
    """
    if k > beam:
        raise ValueError(f"k ({k}) cannot exceed the beam width ({beam})")
    batch, last = stepper.batch, trie.depth - 1
    device = trie.offsets[0].device
    rows = torch.arange(batch, device=device)[:, None, None]
    allowed = None
    if exclude is not None or include_only is not None:
        allowed = prefix_filter(trie, n_items, exclude, include_only)

    def candidates(level, prev, nodes, scores, step=stepper, requests=None):
        """Scores (B, W, codebook) of every child of every beam, -inf where not allowed."""
        logp = step.step(prev, level)                                     # (B, W, K)
        grid = trie.child_grid(level, nodes)                              # (B, W, K)
        valid = grid >= 0
        if allowed is not None:
            request_rows = rows if requests is None else requests[:, None, None]
            valid &= allowed(level, request_rows.expand_as(grid), grid)
        return torch.where(valid, scores[..., None] + logp, torch.full_like(logp, -torch.inf)), grid

    nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)       # the root, one beam
    scores = torch.zeros(batch, 1, device=device)
    prev = None
    for level in range(last):
        total, grid = candidates(level, prev, nodes, scores)
        nodes, scores, flat = _best(total, grid, beam)
        prev = _advance(stepper, flat, total.shape[2], level)

    # The last level keeps only k. A child never scores above its beam (log-probabilities are
    # <= 0), so step the k best beams first, then, for the requests that have any, the other beams
    # whose score still reaches the k-th best candidate found: the same top-k as stepping every
    # beam. On a trained model the last code is near-certain: ~90 % of those beams are skipped.
    first = min(k, nodes.shape[1])
    saved = stepper.fork()
    stepper.reorder(torch.arange(first, device=device).expand(batch, first))
    total, grid = candidates(last, None if prev is None else _dense(prev[:, :first]), nodes[:, :first], scores[:, :first])
    if nodes.shape[1] > first:
        flat_total = total.view(batch, -1)
        kth = torch.topk(flat_total, min(k, flat_total.shape[1]), dim=1).values[:, -1:]
        needed = scores[:, first:] >= kth                                 # a prefix: scores are sorted
        counts = needed.sum(1)
        extra = int(counts.max())
        if extra:
            who = torch.nonzero(counts).squeeze(1)                        # requests with beams in reach
            stepper.restore(saved)
            rest = stepper.subset(who)
            beams = slice(first, first + extra)
            rest.reorder(torch.arange(beams.start, beams.stop, device=device).expand(len(who), extra))
            more, more_grid = candidates(last, _dense(prev[who, beams]), nodes[who, beams], scores[who, beams],
                                         step=rest, requests=who)
            more = torch.where(needed[who, :extra, None], more, torch.full_like(more, -torch.inf))
            total = torch.cat([total, total.new_full((batch, extra, total.shape[2]), -torch.inf)], 1)
            grid = torch.cat([grid, grid.new_full((batch, extra, grid.shape[2]), -1)], 1)
            total[who, first:] = more
            grid[who, first:] = more_grid
    items, scores, _ = _best(total, grid, k)
    if items.shape[1] < k:  # fewer candidates than k in the whole catalog
        pad = k - items.shape[1]
        items = torch.cat([items, torch.full((batch, pad), -1, dtype=items.dtype, device=device)], 1)
        scores = torch.cat([scores, torch.full((batch, pad), -torch.inf, device=device)], 1)
    return BeamResult(items=items, scores=scores)


@torch.no_grad()
def fixed_shape_beam_search(stepper, trie: DenseTrie, beam: int, item_ok: torch.Tensor) -> BeamResult:
    """The same search with every shape fixed by (batch, beam) and no host sync, so that one CUDA
    graph can capture it whole: the trie's child table is dense, each request's filters come as
    one (B, n_items) bool mask `item_ok` (`DenseTrie.level_masks` derives every level's), and
    the last level steps every beam instead of skipping those that cannot reach the top. Returns
    the `beam` best items per request (the caller keeps each request's k)."""
    batch, last = stepper.batch, trie.depth - 1
    allowed = trie.level_masks(item_ok)
    nodes = torch.zeros(batch, 1, dtype=torch.long, device=item_ok.device)   # the root, one beam
    scores = torch.zeros(batch, 1, device=item_ok.device)
    prev = None
    for level in range(trie.depth):
        logp = stepper.step(prev, level)                                      # (B, W, K)
        grid = trie.child_grid(level, nodes)                                  # (B, W, K)
        valid = (grid >= 0) & allowed[level].gather(1, grid.clamp(min=0).flatten(1)).view_as(grid)
        total = torch.where(valid, scores[..., None] + logp, torch.full_like(logp, -torch.inf))
        nodes, scores, flat = _best(total, grid, beam)
        if level < last:
            prev = _advance(stepper, flat, total.shape[2], level)
    return BeamResult(items=nodes, scores=scores)
