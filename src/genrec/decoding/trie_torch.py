"""The prefix trie as torch tensors, for masks and child lookups inside beam search."""

from __future__ import annotations

import torch

from genrec.semantic_ids.trie import PrefixTrie


class TorchTrie:
    def __init__(self, trie: PrefixTrie, device: str | torch.device = "cpu"):
        self.codebook_sizes = trie.codebook_sizes
        self.offsets = [torch.as_tensor(o.astype("int64"), device=device) for o in trie.offsets]
        self.codes = [torch.as_tensor(c.astype("int64"), device=device) for c in trie.codes]
        self.child = [torch.as_tensor(c.astype("int64"), device=device) for c in trie.child]

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    def child_grid(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """(*nodes.shape, codebook) child id per (node, code); -1 where the code is not allowed or
        the node itself is -1 (a dead beam). At the last depth the child is the item index."""
        flat = nodes.reshape(-1)
        grid = torch.full((flat.numel(), self.codebook_sizes[depth]), -1, dtype=torch.long, device=flat.device)
        alive = flat >= 0
        safe = torch.where(alive, flat, torch.zeros_like(flat))
        starts = self.offsets[depth][safe]
        counts = torch.where(alive, self.offsets[depth][safe + 1] - starts, torch.zeros_like(starts))
        rows = torch.repeat_interleave(torch.arange(flat.numel(), device=flat.device), counts)
        first = torch.cumsum(counts, 0) - counts
        edges = torch.repeat_interleave(starts - first, counts) + torch.arange(int(counts.sum()), device=flat.device)
        grid[rows, self.codes[depth][edges]] = self.child[depth][edges]
        return grid.view(*nodes.shape, -1)
