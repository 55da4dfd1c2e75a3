"""TIGER's whole beam search for a batch as one replayed CUDA graph.

On a GPU the eager search is host-bound: ~2,000 kernel launches and ~40 host syncs per batch
keep an H100 ~8 % busy (docs/serving.md, "On a GPU"). Here every batch is padded to a fixed
bucket (1, 2, 4, ... requests) and every prompt to the run's longest (1 + max_history x codes
tokens), and the search is `fixed_shape_beam_search`: no host sync, no data-dependent shape. So
the encoder, the four decode levels and all the beam bookkeeping between them are captured once
per bucket at start and a batch is three copies in, one replay and one copy out.

On a CPU nothing is captured: the same fixed-shape code runs eagerly (that is what the tests
check against the ordinary search; it is slower there than `recommend_batch`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from genrec.decoding.beam_search import BeamResult, fixed_shape_beam_search
from genrec.decoding.filters import dense_item_mask
from genrec.decoding.steppers import TigerStepper
from genrec.decoding.trie_torch import DenseTrie, TorchTrie
from genrec.models.vocab import PAD

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_TABLE_BYTES = 1 << 30   # dense child tables past this are not worth a GPU's memory: eager search instead


@dataclass
class _Bucket:
    """A batch size's fixed inputs and, once captured, its graph and the outputs it writes."""

    size: int
    ids: torch.Tensor        # (size, width) right-padded prompts
    mask: torch.Tensor       # (size, width)
    item_ok: torch.Tensor    # (size, n_items) bool: filters
    graph: torch.cuda.CUDAGraph | None = None
    result: BeamResult | None = None


class GraphedSearch:
    """Fixed-shape TIGER searches over batch buckets, captured as CUDA graphs on a GPU."""

    def __init__(self, loaded, trie: TorchTrie, beam: int, device: torch.device, bf16: bool = False,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS):
        if loaded.kind != "tiger":
            raise ValueError(f"graphed search is built for tiger runs, not {loaded.kind}")
        self.model, self.data, self.beam, self.device, self.bf16 = loaded.model, loaded.data, beam, device, bf16
        self.model.eval()   # before capture: a graph replays whatever dropout it recorded
        self.trie = DenseTrie(trie, self.data.num_items)
        if self.trie.nbytes > MAX_TABLE_BYTES:
            raise ValueError(f"the trie's dense child tables would take {self.trie.nbytes / 2**20:.0f} MiB "
                             f"(limit {MAX_TABLE_BYTES / 2**20:.0f}): serve this catalog without graphs")
        self.width = 1 + self.data.max_history * self.data.item_tokens.shape[1]
        self.captured = device.type == "cuda"
        self._lock = threading.Lock()   # one set of inputs per bucket: one batch at a time
        pool = torch.cuda.graph_pool_handle() if self.captured else None
        self.buckets = []
        for size in sorted(set(buckets), reverse=True):   # largest first: the smaller ones reuse its memory
            bucket = self._blank(size)
            if self.captured:
                self._capture(bucket, pool)
            self.buckets.append(bucket)
        self.buckets.reverse()

    def _blank(self, size: int) -> _Bucket:
        ids = torch.full((size, self.width), PAD, dtype=torch.long, device=self.device)
        mask = torch.zeros(size, self.width, dtype=torch.long, device=self.device)
        mask[:, 0] = 1   # rows a batch leaves unused still attend to something: no NaN anywhere
        item_ok = torch.ones(size, self.data.num_items, dtype=torch.bool, device=self.device)
        return _Bucket(size, ids, mask, item_ok)

    def _search(self, bucket: _Bucket) -> BeamResult:
        # Autocast's weight cache would hold tensors the graph frees after capture: off.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            stepper = TigerStepper(self.model, self.data.vocab, bucket.ids, bucket.mask)
            return fixed_shape_beam_search(stepper, self.trie, self.beam, bucket.item_ok)

    def _capture(self, bucket: _Bucket, pool) -> None:
        side = torch.cuda.Stream(self.device)   # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):   # cuBLAS handles and workspaces are made here, not during capture
                self._search(bucket)
        torch.cuda.current_stream(self.device).wait_stream(side)
        bucket.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(bucket.graph, pool=pool):
            bucket.result = self._search(bucket)

    def bucket_for(self, size: int) -> _Bucket:
        return next(b for b in self.buckets if b.size >= size)

    @torch.no_grad()
    def run(self, users, histories, exclude=None, include_only=None) -> tuple[np.ndarray, np.ndarray]:
        """As `recommend_batch` with exclude_history=False, for `beam` results per request:
        (items (B, beam) int64, -1 padded; scores (B, beam) float32)."""
        largest = self.buckets[-1].size
        parts = [self._run_chunk(users[lo:lo + largest], histories[lo:lo + largest],
                                 None if exclude is None else exclude[lo:lo + largest],
                                 None if include_only is None else include_only[lo:lo + largest])
                 for lo in range(0, len(users), largest)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _run_chunk(self, users, histories, exclude, include_only):
        size = len(users)
        ids, mask = self.data.prompt_batch(users, histories)
        item_ok = dense_item_mask(self.data.num_items, exclude, include_only, size)
        bucket = self.bucket_for(size)
        with self._lock:
            bucket.ids[:size].fill_(PAD)
            bucket.ids[:size, :ids.shape[1]].copy_(ids)
            bucket.mask[:size].zero_()
            bucket.mask[:size, :mask.shape[1]].copy_(mask)
            bucket.item_ok[:size].copy_(item_ok)
            if self.captured:
                bucket.graph.replay()
                result = bucket.result
            else:
                result = self._search(bucket)
            items, scores = result.items[:size].cpu().numpy(), result.scores[:size].float().cpu().numpy()
        pad = self.beam - items.shape[1]   # a catalog with fewer leaves than the beam
        if pad > 0:
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return items, scores
