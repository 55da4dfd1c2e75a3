"""The whole beam search for a batch (tiger, or causal without the prefix cache) as one compiled
call, or one replayed CUDA graph.

The ordinary search (`recommend_batch`) is a Python loop over the levels whose bookkeeping reads
sizes back from the device. Under torch.compile on a CPU it runs as ~10 compiled pieces per batch,
each paying its guards and prologue, with eager bookkeeping between them; on a GPU it is
launch-bound (~2,000 kernel launches and ~40 host syncs per batch, docs/serving.md). Here the
search is `fixed_shape_beam_search` — no host sync, no data-dependent shape — over prompts padded
to the run's longest (1 + max_history x codes tokens; right-padded for tiger's encoder,
left-padded for the causal prefill), so the encoder or prefill, every decode level and the
bookkeeping between them are one unit:

- `compiled` (`genrec serve --compile`): torch.compile'd whole, with the batch size dynamic: one
  graph for a batch of 1 and one for any other size, both made at start.
- `cuda_graphs` (`--cuda-graphs`, on a GPU): captured as one CUDA graph per batch bucket (1, 2,
  4 .. 128 requests) at start; a batch is padded to its bucket and served by three copies in, one
  replay and one copy out. On a CPU nothing is captured and the same buckets run the same code
  eagerly: that is how the tests check it.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genrec.decoding.beam_search import BeamResult, fixed_shape_beam_search
from genrec.decoding.filters import dense_item_mask
from genrec.decoding.steppers import CausalStepper, TigerStepper
from genrec.decoding.trie_torch import DenseTrie, TorchTrie
from genrec.models.vocab import PAD
from genrec.runtime import traces_kept_on_disk

GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_TABLE_BYTES = 1 << 30   # dense child tables past this cost more memory than the search saves


def fits(trie: TorchTrie) -> bool:
    return DenseTrie.table_bytes(trie) <= MAX_TABLE_BYTES


def saved_trace_scope(loaded, *settings) -> str:
    """The `traces_kept_on_disk` scope of a run's compiled decode: a short name for what its guards
    test (model sizes, history length, thread count, and the caller's settings), so that the
    packages of one scope fit every run served with them."""
    data = loaded.data
    guarded = (loaded.kind, loaded.model.config, data.max_history, tuple(data.item_tokens.shape),
               data.vocab.codebook_sizes, torch.get_num_threads(), torch.__version__, *settings)
    return hashlib.sha256(repr(guarded).encode()).hexdigest()[:16]


@dataclass
class _Bucket:
    """A captured batch size: its fixed inputs, its graph and the outputs the graph writes."""

    size: int
    ids: torch.Tensor        # (size, width) padded prompts
    prompt_mask: torch.Tensor   # tiger: (size, 1, 1, width) additive key mask; causal: (size, width) 1 on prompts
    item_ok: torch.Tensor    # (size, n_items) bool: filters
    graph: torch.cuda.CUDAGraph | None = None
    result: BeamResult | None = None


class WholeSearch:
    def __init__(self, loaded, trie: TorchTrie, beam: int, device: torch.device, bf16: bool = False,
                 mode: str = "compiled"):
        if loaded.kind not in ("tiger", "causal"):
            raise ValueError(f"the whole-search path is built for tiger and causal runs, not {loaded.kind}")
        if not fits(trie):
            raise ValueError(f"the trie's dense child tables would take {DenseTrie.table_bytes(trie) / 2**20:.0f} "
                             f"MiB (limit {MAX_TABLE_BYTES / 2**20:.0f}): serve this catalog without --cuda-graphs")
        self.model, self.data, self.beam, self.device, self.bf16 = loaded.model, loaded.data, beam, device, bf16
        self.tiger = loaded.kind == "tiger"
        self.model.eval()   # before compiling or capturing: dropout would be traced in
        self.trie = DenseTrie(trie, self.data.num_items)
        self.width = 1 + self.data.max_history * self.data.item_tokens.shape[1]
        if self.tiger:
            with torch.no_grad():   # the same for every batch: made once, outside what is compiled or captured
                self.position_bias = self.model.encoder_bias(self.width, self.width)
        self.search, self.buckets, self._mark_batch_dynamic = self._search, [], False
        if mode == "cuda_graphs":
            self._lock = threading.Lock()   # buckets: one set of inputs each, one batch at a time
            pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None
            for size in sorted(GRAPH_BUCKETS, reverse=True):   # largest first: the smaller reuse its memory
                bucket = self._inputs(size)
                if pool is not None:
                    self._capture(bucket, pool)
                self.buckets.insert(0, bucket)
        elif mode == "compiled":
            # No lock in this mode: dynamo pickles this object with the traces it saves. Saved traces
            # load when torch.compile is called (a restart: 4-5 s instead of 55-59, docs/serving.md).
            with traces_kept_on_disk(saved_trace_scope(loaded, "whole", beam, bf16, device.type)) as loaded_count:
                self.search = torch.compile(self._search, fullgraph=True)
                # Traced here, the batch is marked dynamic: one graph for every size but 1. Loaded
                # graphs refuse a marked tensor (their guards record it unmarked), and graphs traced
                # marked take unmarked ones: only a fresh start-up marks.
                self._mark_batch_dynamic = loaded_count() == 0
                for size in (3, 1, 2):   # a dynamic batch first (sizes 0 and 1 are specialised), then 1
                    self.run([0] * size, [[0, 1]] * size)
                self._mark_batch_dynamic = False
        else:
            raise ValueError(f"mode must be compiled or cuda_graphs, not {mode!r}")

    def _inputs(self, size: int) -> _Bucket:
        ids = torch.full((size, self.width), PAD, dtype=torch.long, device=self.device)
        mask = torch.zeros(size, self.width, dtype=torch.long, device=self.device)
        mask[:, 0 if self.tiger else -1] = 1   # rows a batch leaves unused still attend to something: no NaN
        item_ok = torch.ones(size, self.data.num_items, dtype=torch.bool, device=self.device)
        return _Bucket(size, ids, self._prompt_mask(mask), item_ok)

    def _padded(self, users, histories) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts padded to the run's width on the side `prompt_batch` pads: (ids, prompt mask)."""
        ids, mask = self.data.prompt_batch(users, histories)
        pad = (0, self.width - ids.shape[1]) if self.tiger else (self.width - ids.shape[1], 0)
        return F.pad(ids, pad, value=PAD).to(self.device), self._prompt_mask(F.pad(mask, pad).to(self.device))

    def _prompt_mask(self, mask: torch.Tensor) -> torch.Tensor:
        # tiger: the additive key mask made here, outside the compiled function (made inside,
        # inductor recomputed its int-to-float conversion in every attention's softmax).
        return self.model._key_mask(mask) if self.tiger else mask

    def _search(self, ids: torch.Tensor, prompt_mask: torch.Tensor, item_ok: torch.Tensor) -> BeamResult:
        # Autocast's weight cache would keep tensors that a captured graph frees: off.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            if self.tiger:
                stepper = TigerStepper.from_biases(self.model, self.data.vocab, ids, self.position_bias, prompt_mask)
            else:
                stepper = CausalStepper(self.model, self.data.vocab, ids, prompt_mask)
            return fixed_shape_beam_search(stepper, self.trie, self.beam, item_ok)

    def _capture(self, bucket: _Bucket, pool) -> None:
        side = torch.cuda.Stream(self.device)   # warm-up off the default stream, as capture requires
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):   # cuBLAS handles and workspaces are made here, not during capture
                self._search(bucket.ids, bucket.prompt_mask, bucket.item_ok)
        torch.cuda.current_stream(self.device).wait_stream(side)
        bucket.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(bucket.graph, pool=pool):
            bucket.result = self._search(bucket.ids, bucket.prompt_mask, bucket.item_ok)

    @torch.no_grad()
    def run(self, users, histories, exclude=None, include_only=None) -> tuple[np.ndarray, np.ndarray]:
        """As `recommend_batch` with exclude_history=False, for `beam` results per request:
        (items (B, beam) int64, -1 padded; scores (B, beam) float32)."""
        step = self.buckets[-1].size if self.buckets else max(1, len(users))
        parts = [self._run_chunk(users[lo:lo + step], histories[lo:lo + step],
                                 None if exclude is None else exclude[lo:lo + step],
                                 None if include_only is None else include_only[lo:lo + step])
                 for lo in range(0, len(users), step)]
        items, scores = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        pad = self.beam - items.shape[1]   # a catalog with fewer items than the beam
        if pad > 0:
            items = np.pad(items, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return items, scores

    def _run_chunk(self, users, histories, exclude, include_only):
        size = len(users)
        ids, prompt_mask = self._padded(users, histories)
        item_ok = dense_item_mask(self.data.num_items, exclude, include_only, size).to(self.device)
        if not self.buckets:
            if self._mark_batch_dynamic:
                for tensor in (ids, prompt_mask, item_ok):
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
            # The search sets its own precision. Dynamo guards on the caller's autocast state (a
            # runner calls under autocast, start-up does not: a recompile), and saved traces refuse
            # tensors made under autocast (their dispatch keys differ): the call runs without it.
            with torch.autocast(self.device.type, enabled=False):
                result = self.search(ids, prompt_mask, item_ok)
            return result.items.cpu().numpy(), result.scores.float().cpu().numpy()
        bucket = next(b for b in self.buckets if b.size >= size)
        with self._lock:
            bucket.ids[:size].copy_(ids)
            bucket.prompt_mask[:size].copy_(prompt_mask)
            bucket.item_ok[:size].copy_(item_ok)
            if bucket.graph is not None:
                bucket.graph.replay()
                result = bucket.result
            else:   # no GPU: the same fixed-shape search, uncaptured
                result = self._search(bucket.ids, bucket.prompt_mask, bucket.item_ok)
            return result.items[:size].cpu().numpy(), result.scores[:size].float().cpu().numpy()
