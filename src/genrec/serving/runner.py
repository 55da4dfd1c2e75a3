"""The model runner: one batch of compatible requests -> their top-k lists, on a trained run.

The engine hands it requests that share a beam width and an allow-list (`group_key`), so one
`recommend_batch` call — one encoder pass, one beam search — serves the whole batch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from genrec.decoding.recommend import recommend_batch


@dataclass
class Request:
    """One recommendation, in the model's item indices."""

    user_idx: int                          # picks the hashed user token; 0 for unknown users
    history: list[int]                     # oldest first
    k: int = 10
    exclude: list[int] | None = None       # never returned (the history, when excluded, and deny lists)
    include_only: tuple[int, ...] | None = None


@dataclass
class RunnerConfig:
    beam: int = 20
    bf16: bool = False        # bf16 autocast: ~2x throughput, 99.2 % of fp32's top-10 (benchmarks/decode.py)
    compile: bool = False     # torch.compile the decode path: +7 % after ~35 s of compilation
    sub_tries: int = 64       # allow-list tries kept (LRU)

    def __post_init__(self):
        if self.beam < 1 or self.sub_tries < 1:
            raise ValueError("beam and sub_tries must be >= 1")


class ModelRunner:
    def __init__(self, loaded, config: RunnerConfig | None = None):
        from genrec.runtime import compile_for_decoding

        self.loaded, self.config = loaded, config or RunnerConfig()
        self.kind = loaded.kind
        if self.config.compile and self.kind != "sasrec":
            compile_for_decoding(loaded.model)
        self._sub_tries: OrderedDict[tuple, object] = OrderedDict()

    def group_key(self, request: Request) -> tuple:
        """Requests with equal keys can share one batch."""
        return max(self.config.beam, request.k), request.include_only

    def _trie(self, include_only: tuple[int, ...] | None):
        from genrec.decoding.trie_torch import trie_over_items

        if include_only is None or self.kind == "sasrec":
            return self.loaded.trie
        if include_only not in self._sub_tries:
            self._sub_tries[include_only] = trie_over_items(self.loaded.table, include_only)
            if len(self._sub_tries) > self.config.sub_tries:
                self._sub_tries.popitem(last=False)
        self._sub_tries.move_to_end(include_only)
        return self._sub_tries[include_only]

    @torch.no_grad()
    def run(self, requests: list[Request]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(items, scores) per request, best first, at most its k (fewer when filters leave fewer)."""
        beam, include_only = self.group_key(requests[0])
        if any(self.group_key(r) != (beam, include_only) for r in requests):
            raise ValueError("a batch must share its group key")
        if include_only is not None and len(include_only) == 0:
            return [(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)) for _ in requests]
        k = max(r.k for r in requests)
        run = self.loaded
        allow = [list(include_only)] * len(requests) if include_only is not None and self.kind == "sasrec" else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.bf16):
            items, scores = recommend_batch(run.model, run.kind, run.data, self._trie(include_only),
                                            [r.user_idx for r in requests], [r.history for r in requests],
                                            k=k, beam=beam, exclude_history=False,
                                            exclude=[r.exclude or [] for r in requests], include_only=allow)
        out = []
        for r, row_items, row_scores in zip(requests, items, scores):
            keep = row_items[: r.k] >= 0
            out.append((row_items[: r.k][keep], row_scores[: r.k][keep].astype(np.float32)))
        return out
