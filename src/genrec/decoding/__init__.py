"""Decoding: trie-constrained beam search over semantic IDs, and an exhaustive reference."""
