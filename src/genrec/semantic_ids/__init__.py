"""Semantic IDs: item text -> embedding -> residual codes -> tokens, with a compact prefix trie."""
