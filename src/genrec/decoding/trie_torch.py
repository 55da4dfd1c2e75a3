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
        # per depth, the node each edge leaves from (the CSR rows unrolled)
        self.edge_parent = [torch.repeat_interleave(torch.arange(len(o) - 1, device=o.device), o[1:] - o[:-1])
                            for o in self.offsets]
        self.node_of_item, self.items_below = self._ancestry()

    def _ancestry(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Per depth d in 1..depth-1: each item's node at depth d (-1 for ids not in the trie) and
        the number of items below each node (what the per-level filters compare against)."""
        last, edge_parent = self.depth - 1, self.edge_parent
        size = int(self.child[last].max()) + 1 if self.child[last].numel() else 0
        node = torch.full((size,), -1, dtype=torch.long, device=self.child[last].device)
        node[self.child[last]] = edge_parent[last]
        node_of_item = {last: node} if last >= 1 else {}
        for depth in range(last, 1, -1):   # a depth-d node's parent is at depth d - 1
            parent = torch.empty(len(self.offsets[depth]) - 1, dtype=torch.long, device=node.device)
            parent[self.child[depth - 1]] = edge_parent[depth - 1]
            node_of_item[depth - 1] = torch.where(node_of_item[depth] >= 0, parent[node_of_item[depth].clamp(min=0)],
                                                  node_of_item[depth])
        items_below = {d: torch.bincount(n[n >= 0], minlength=len(self.offsets[d]) - 1)
                       for d, n in node_of_item.items()}
        return node_of_item, items_below

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


class DenseTrie:
    """The trie as one dense child table per level plus each item's node at every depth, for a
    search whose every shape is fixed and that never waits on the device (CUDA graphs capture
    nothing else): a child lookup is one gather, where `TorchTrie.child_grid` sizes its scatter
    from the data (a host sync per level). Tables are (nodes + 1) x codebook int64, ~6.6 MB for
    ML-100K; the extra last row is all -1, the children of a dead beam."""

    def __init__(self, trie: TorchTrie, n_items: int):
        self.depth = trie.depth
        self.children, self.item_node = [], {}
        for depth, offsets in enumerate(trie.offsets):
            table = torch.full((len(offsets), trie.codebook_sizes[depth]), -1, dtype=torch.long, device=offsets.device)
            table[trie.edge_parent[depth], trie.codes[depth]] = trie.child[depth]
            self.children.append(table)
        for depth, node in trie.node_of_item.items():   # depths 1..depth-1, as in TorchTrie
            nodes = len(self.children[depth]) - 1
            padded = torch.full((n_items,), -1, dtype=torch.long, device=node.device)
            padded[:min(n_items, len(node))] = node[:n_items]
            self.item_node[depth] = torch.where(padded >= 0, padded, nodes)   # not in the trie: a spare column

    @staticmethod
    def table_bytes(trie: TorchTrie) -> int:
        """What the child tables of `trie` would take."""
        return sum(len(offsets) * size * 8 for offsets, size in zip(trie.offsets, trie.codebook_sizes))

    def child_grid(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """As `TorchTrie.child_grid`, without a host sync."""
        table = self.children[depth]
        return table[torch.where(nodes >= 0, nodes, len(table) - 1)]

    def level_masks(self, item_ok: torch.Tensor) -> list[torch.Tensor]:
        """Per level, (B, children of the level) bool: may request b's beam go to this child? A
        node is allowed when some item below it is (as `filters.prefix_filter` decides from
        key lists); at the last level the children are the items. item_ok: (B, n_items) bool."""
        masks = []
        for depth in range(1, self.depth):
            nodes = len(self.children[depth]) - 1
            below = torch.zeros(item_ok.shape[0], nodes + 1, device=item_ok.device)
            below.index_add_(1, self.item_node[depth], item_ok.float())   # allowed items below each node
            masks.append(below[:, :nodes] > 0)
        return masks + [item_ok]
