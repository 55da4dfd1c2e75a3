"""A compact prefix trie over semantic-ID codes, stored as one CSR table per depth.

Depth d holds the nodes reached after d codes (depth 0 is the root). For the edges leaving depth-d
nodes: `offsets[d][node] : offsets[d][node + 1]` is the node's range in `codes[d]` (sorted) and
`child[d]` (the node id at depth d + 1, or the item index at the last depth). Codes are uint8 when
codebooks have <= 256 entries, so a million items take ~9 bytes per edge per depth. Where a depth
is small, a dense (nodes x codebook) bitmask is kept too, so beam search gathers masks in one op.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DENSE_MASK_LIMIT = 1 << 24  # keep a dense mask for a depth when nodes * codebook <= this many bits


def _code_dtype(max_size: int):
    return np.uint8 if max_size <= 256 else np.uint16 if max_size <= 65536 else np.int32


@dataclass
class PrefixTrie:
    codebook_sizes: tuple[int, ...]
    offsets: list[np.ndarray]     # per depth, (nodes + 1,) int32/int64
    codes: list[np.ndarray]       # per depth, (edges,) uint8/uint16
    child: list[np.ndarray]       # per depth, (edges,) int32
    dense: dict[int, np.ndarray] = field(default_factory=dict)  # depth -> (nodes, codebook) bool

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_items(self) -> int:
        return len(self.child[-1])

    def num_nodes(self, depth: int) -> int:
        return len(self.offsets[depth]) - 1

    @property
    def nbytes(self) -> int:
        arrays = [*self.offsets, *self.codes, *self.child, *self.dense.values()]
        return int(sum(a.nbytes for a in arrays))

    @classmethod
    def from_codes(cls, codes: np.ndarray, codebook_sizes: tuple[int, ...],
                   dense_limit: int = DENSE_MASK_LIMIT, item_ids: np.ndarray | None = None) -> "PrefixTrie":
        """Build from an (items, depth) code matrix whose rows are unique; row i is item i, or
        item_ids[i] for a trie over part of a catalog."""
        codes = np.asarray(codes)
        n, depth = codes.shape
        if depth != len(codebook_sizes):
            raise ValueError("codes and codebook_sizes disagree on the depth")
        if n and ((codes < 0).any() or (codes >= np.asarray(codebook_sizes)).any()):
            raise ValueError("a code is outside its codebook")
        order = np.lexsort(codes.T[::-1])  # rows sorted by level 0, then 1, ...
        s = codes[order]
        # new_prefix[l][i]: row i starts a new prefix of length l + 1 (l = 0..depth-1).
        changed = np.zeros((depth, n), dtype=bool)
        if n:
            changed[:, 0] = True
            changed[:, 1:] = np.logical_or.accumulate(s[1:] != s[:-1], axis=1).T
        if n and not changed[-1].all():
            raise ValueError("two items share the same code tuple; de-duplicate first")
        prefix_id = np.cumsum(changed, axis=1, dtype=np.int64) - 1  # id of each row's prefix per length
        offsets, edge_codes, child = [], [], []
        code_dtype = _code_dtype(max(codebook_sizes))
        for d in range(depth):
            rows = np.flatnonzero(changed[d])
            parents = np.zeros(len(rows), dtype=np.int64) if d == 0 else prefix_id[d - 1, rows]
            n_parents = 1 if d == 0 else (int(prefix_id[d - 1, -1]) + 1 if n else 0)
            counts = np.bincount(parents, minlength=n_parents)
            off = np.zeros(n_parents + 1, dtype=np.int64)
            np.cumsum(counts, out=off[1:])
            offsets.append(off.astype(np.int32 if off[-1] < 2**31 else np.int64))
            edge_codes.append(s[rows, d].astype(code_dtype))
            if d == depth - 1:
                target = order[rows] if item_ids is None else np.asarray(item_ids)[order[rows]]
            else:
                target = prefix_id[d, rows]
            child.append(target.astype(np.int32))
        trie = cls(tuple(int(c) for c in codebook_sizes), offsets, edge_codes, child)
        trie._build_dense(dense_limit)
        return trie

    def _build_dense(self, limit: int) -> None:
        self.dense = {}
        for d in range(self.depth):
            if self.num_nodes(d) * self.codebook_sizes[d] <= limit:
                self.dense[d] = self._sparse_mask(d, np.arange(self.num_nodes(d)))

    def _sparse_mask(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64)
        mask = np.zeros((len(nodes), self.codebook_sizes[depth]), dtype=bool)
        starts = self.offsets[depth][nodes].astype(np.int64)
        counts = self.offsets[depth][nodes + 1].astype(np.int64) - starts
        total = int(counts.sum())
        rows = np.repeat(np.arange(len(nodes)), counts)
        first = np.cumsum(counts) - counts
        edges = np.repeat(starts - first, counts) + np.arange(total)
        mask[rows, self.codes[depth][edges].astype(np.int64)] = True
        return mask

    def allowed(self, depth: int, nodes: np.ndarray) -> np.ndarray:
        """(len(nodes), codebook) bool: which codes may follow each node at `depth`."""
        nodes = np.asarray(nodes, dtype=np.int64)
        if depth in self.dense:
            return self.dense[depth][nodes]
        return self._sparse_mask(depth, nodes)

    def step(self, depth: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Child of each (node, code) pair; -1 where the code is not allowed. Vectorized binary
        search inside each node's sorted edge range."""
        nodes = np.asarray(nodes, dtype=np.int64)
        codes = np.asarray(codes, dtype=np.int64)
        lo = self.offsets[depth][nodes].astype(np.int64)
        hi = self.offsets[depth][nodes + 1].astype(np.int64)
        edge_codes = self.codes[depth].astype(np.int64, copy=False)
        end = hi.copy()
        while True:
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) // 2
            go_right = active & (edge_codes[np.minimum(mid, len(edge_codes) - 1)] < codes)
            lo = np.where(go_right, mid + 1, lo)
            hi = np.where(active & ~go_right, mid, hi)
        out = np.full(len(nodes), -1, dtype=np.int64)
        inside = np.flatnonzero(lo < end)
        hit = inside[edge_codes[lo[inside]] == codes[inside]]
        out[hit] = self.child[depth][lo[hit]]
        return out

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Item index of each full code tuple (rows of an (n, depth) array); -1 if absent."""
        codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
        node = np.zeros(len(codes), dtype=np.int64)
        for d in range(self.depth):
            ok = node >= 0
            nxt = np.full(len(codes), -1, dtype=np.int64)
            nxt[ok] = self.step(d, node[ok], codes[ok, d])
            node = nxt
        return node

    def children(self, depth: int, node: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.offsets[depth][node]), int(self.offsets[depth][node + 1])
        return self.codes[depth][a:b].astype(np.int64), self.child[depth][a:b].astype(np.int64)

    # -- persistence ---------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        out = {"codebook_sizes": np.asarray(self.codebook_sizes, dtype=np.int64)}
        for d in range(self.depth):
            out[f"offsets_{d}"], out[f"codes_{d}"], out[f"child_{d}"] = \
                self.offsets[d], self.codes[d], self.child[d]
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], dense_limit: int = DENSE_MASK_LIMIT) -> "PrefixTrie":
        sizes = tuple(int(x) for x in state["codebook_sizes"])
        trie = cls(sizes, [state[f"offsets_{d}"] for d in range(len(sizes))],
                   [state[f"codes_{d}"] for d in range(len(sizes))],
                   [state[f"child_{d}"] for d in range(len(sizes))])
        trie._build_dense(dense_limit)
        return trie

    def save(self, path: str | Path) -> None:
        from genrec.semantic_ids.table import save_arrays

        save_arrays(path, self.state())

    @classmethod
    def load(cls, path: str | Path) -> "PrefixTrie":
        from genrec.semantic_ids.table import load_arrays

        return cls.from_state(load_arrays(path))
