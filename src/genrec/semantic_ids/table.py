"""`SemanticIdTable`: item index <-> code tuple <-> model tokens, in both directions.

Level l with code c is the token string `<{letter_l}_{c}>` (`<a_99><b_225><c_67><d_3>`); in a
model vocabulary each level owns a contiguous block of ids, `token = offset[l] + c`, where the
offsets are the running sums of the codebook sizes (the collision level included).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genrec.semantic_ids.trie import PrefixTrie

_TOKEN = re.compile(r"<([a-z])_(\d+)>")


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """safetensors, written atomically."""
    from safetensors.numpy import save

    from genrec.files import atomic_write_bytes

    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))


def load_arrays(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


@dataclass
class SemanticIdTable:
    codes: np.ndarray                 # (items, depth) int32; row i = item index i
    codebook_sizes: tuple[int, ...]   # capacity of each level, the collision level last
    _trie: PrefixTrie | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.codes = np.ascontiguousarray(self.codes, dtype=np.int32)
        self.codebook_sizes = tuple(int(c) for c in self.codebook_sizes)
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.codebook_sizes):
            raise ValueError("codes must be (items, depth) with one codebook size per level")
        if len(self.codebook_sizes) > len(string.ascii_lowercase):
            raise ValueError("at most 26 levels")

    @property
    def num_items(self) -> int:
        return len(self.codes)

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def token_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]]).astype(np.int64)

    @property
    def vocab_size(self) -> int:
        """Number of semantic-ID tokens (models add their own special tokens after these)."""
        return int(sum(self.codebook_sizes))

    @property
    def trie(self) -> PrefixTrie:
        if self._trie is None:
            self._trie = PrefixTrie.from_codes(self.codes, self.codebook_sizes)
        return self._trie

    # -- item -> codes / tokens ----------------------------------------------------------------

    def tokens(self, items) -> np.ndarray:
        """Token ids of items: (depth,) for one item, (n, depth) for many."""
        return self.codes[items].astype(np.int64) + self.token_offsets

    def token_strings(self, item: int) -> str:
        return "".join(f"<{string.ascii_lowercase[l]}_{c}>" for l, c in enumerate(self.codes[item]))

    # -- codes / tokens -> item ----------------------------------------------------------------

    def item_of_codes(self, codes) -> int | None:
        found = int(self.trie.lookup(np.asarray(codes))[0])
        return None if found < 0 else found

    def items_of_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """(n, depth) token ids -> item index per row (-1 where no item has those tokens)."""
        codes = np.atleast_2d(np.asarray(tokens, dtype=np.int64)) - self.token_offsets
        valid = ((codes >= 0) & (codes < np.asarray(self.codebook_sizes))).all(axis=1)
        out = np.full(len(codes), -1, dtype=np.int64)
        out[valid] = self.trie.lookup(codes[valid])
        return out

    def item_of_string(self, text: str) -> int | None:
        """'<a_3><b_17><c_0><d_0>' -> item index (None if absent or malformed)."""
        parts = _TOKEN.findall(text)
        if len(parts) != self.depth or "".join(f"<{a}_{b}>" for a, b in parts) != text.strip():
            return None
        if [a for a, _ in parts] != list(string.ascii_lowercase[: self.depth]):
            return None
        codes = [int(b) for _, b in parts]
        if any(c >= s for c, s in zip(codes, self.codebook_sizes)):
            return None
        return self.item_of_codes(codes)

    def level_of_token(self, token: int) -> tuple[int, int]:
        """Token id -> (level, code)."""
        level = int(np.searchsorted(self.token_offsets, token, side="right") - 1)
        if not (0 <= token < self.vocab_size):
            raise ValueError(f"token {token} is outside the semantic-ID vocabulary")
        return level, int(token - self.token_offsets[level])

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        save_arrays(path, {"codes": self.codes,
                           "codebook_sizes": np.asarray(self.codebook_sizes, dtype=np.int64)})

    @classmethod
    def load(cls, path: str | Path) -> "SemanticIdTable":
        arrays = load_arrays(path)
        return cls(arrays["codes"], tuple(int(x) for x in arrays["codebook_sizes"]))


def add_collision_level(codes: np.ndarray, capacity: int) -> np.ndarray:
    """TIGER's extra level: items sharing a code prefix are numbered 0, 1, 2, … in item order.

    Returns the extended (items, levels + 1) codes. Raises if a prefix holds more items than
    `capacity` (then more levels or larger codebooks are needed).
    """
    codes = np.asarray(codes, dtype=np.int32)
    n = len(codes)
    order = np.lexsort(codes.T[::-1])  # stable: ties stay in item order
    s = codes[order]
    starts = np.ones(n, dtype=bool)
    if n:
        starts[1:] = (s[1:] != s[:-1]).any(axis=1)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.empty(n, dtype=np.int32)
    rank[order] = np.arange(n) - group_start
    if n and rank.max() >= capacity:
        raise ValueError(f"{rank.max() + 1} items share one code prefix, more than the collision "
                         f"level's {capacity} slots; use more levels or larger codebooks")
    return np.concatenate([codes, rank[:, None]], axis=1)
