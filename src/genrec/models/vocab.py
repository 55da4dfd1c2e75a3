"""The token vocabulary of the generative models: specials, semantic-ID blocks, user buckets.

    0 pad (T5's decoder start as well)   1 eos / bos   2.. semantic-ID tokens, one block per level
    then `user_buckets` user tokens (users hashed into buckets, TIGER's user token)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, EOS = 0, 1
SPECIALS = 2


@dataclass(frozen=True)
class SemanticVocab:
    codebook_sizes: tuple[int, ...]
    user_buckets: int = 0

    @property
    def depth(self) -> int:
        return len(self.codebook_sizes)

    @property
    def level_offsets(self) -> np.ndarray:
        return SPECIALS + np.concatenate([[0], np.cumsum(self.codebook_sizes)[:-1]]).astype(np.int64)

    def level_start(self, level: int) -> int:
        """First token id of a level's block (plain ints: torch.compile traces numpy as tensors)."""
        return SPECIALS + sum(self.codebook_sizes[:level])

    def level_slice(self, level: int) -> slice:
        start = self.level_start(level)
        return slice(start, start + self.codebook_sizes[level])

    @property
    def user_offset(self) -> int:
        return SPECIALS + int(sum(self.codebook_sizes))

    @property
    def size(self) -> int:
        return self.user_offset + self.user_buckets

    def token_levels(self) -> np.ndarray:
        """(size,) the semantic-ID level of every token id, -1 for specials and user tokens."""
        levels = np.full(self.size, -1, dtype=np.int64)
        for level in range(self.depth):
            block = self.level_slice(level)
            levels[block] = level
        return levels

    def item_tokens(self, codes: np.ndarray) -> np.ndarray:
        """(..., depth) codes -> token ids."""
        return np.asarray(codes, dtype=np.int64) + self.level_offsets

    def user_token(self, user_idx: int) -> int:
        if self.user_buckets <= 0:
            raise ValueError("this vocabulary has no user tokens")
        # Knuth multiplicative hash: deterministic across runs, unlike Python's hash().
        return self.user_offset + (int(user_idx) * 2654435761 % 2**32) % self.user_buckets
