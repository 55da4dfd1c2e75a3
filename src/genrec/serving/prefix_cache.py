"""Prefix cache for decoder-only models: a returning user whose history grew reuses the prompt
KV computed last time, and only the new tokens are prefilled.

Prompts are cut into blocks of `block_size` tokens; block i is keyed by a hash chain
h_i = H(h_{i-1}, tokens of block i), so a key names the whole prefix up to that block (vLLM's
and nano-vllm's scheme). Each entry holds that block's (k, v) of every layer as one tensor; a
lookup walks the chain while keys are present and concatenates their KV, in one op for all the
layers (a hit's prefill is a few ms of small ops on a CPU, where per-layer cats cost ~4 %).
Entries are evicted least recently used.
RoPE positions are absolute from the prompt start, so a cached block is valid exactly when the
whole prefix before it is the same, which the chain guarantees.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch


class PrefixCache:
    def __init__(self, block_size: int = 8, max_blocks: int = 8192):
        if block_size < 1 or max_blocks < 1:
            raise ValueError("block_size and max_blocks must be >= 1")
        self.block_size, self.max_blocks = block_size, max_blocks
        self._blocks: OrderedDict[bytes, torch.Tensor] = OrderedDict()   # (layers, 2, 1, Hkv, block_size, hd)
        self.lookups = self.hits = self.hit_tokens = 0

    def keys(self, tokens) -> list[bytes]:
        """The chain keys of the prompt's full blocks."""
        tokens = np.asarray(tokens, dtype=np.int64)
        keys, previous = [], b""
        for start in range(0, len(tokens) - self.block_size + 1, self.block_size):
            previous = hashlib.blake2b(previous + tokens[start:start + self.block_size].tobytes(),
                                       digest_size=16).digest()
            keys.append(previous)
        return keys

    def lookup(self, tokens, keep_last: int = 1) -> tuple[int, list | None]:
        """(cached prefix length, its per-layer (k, v) of shape (1, Hkv, P, hd) or None). At least
        `keep_last` tokens are left uncached: the prefill must run on something to predict."""
        self.lookups += 1
        found = []
        for key in self.keys(tokens)[: max(0, (len(tokens) - keep_last) // self.block_size)]:
            block = self._blocks.get(key)
            if block is None:
                break
            self._blocks.move_to_end(key)
            found.append(block)
        if not found:
            return 0, None
        self.hits += 1
        self.hit_tokens += len(found) * self.block_size
        joined = torch.cat(found, dim=-2) if len(found) > 1 else found[0]   # read only: the prefill cats it on
        return len(found) * self.block_size, [tuple(layer.unbind()) for layer in joined.unbind()]

    def insert(self, tokens, kv: list, start: int = 0) -> None:
        """Store the full blocks of a prompt from `start` (a block boundary: where its lookup's
        cached prefix ended) on, given the per-layer (k, v) of shape (1, Hkv, T - start, hd) of
        tokens[start:]."""
        if start % self.block_size:
            raise ValueError(f"start {start} is not a multiple of the block size {self.block_size}")
        for i, key in enumerate(self.keys(tokens)[start // self.block_size:]):
            if key in self._blocks:
                self._blocks.move_to_end(key)
                continue
            span = slice(i * self.block_size, (i + 1) * self.block_size)
            self._blocks[key] = torch.stack([torch.stack((k[..., span, :], v[..., span, :])) for k, v in kv])
            if len(self._blocks) > self.max_blocks:
                self._blocks.popitem(last=False)

    def __len__(self) -> int:
        return len(self._blocks)
