"""The model runner: one batch of compatible requests -> their top-k lists, on a trained run.

The engine hands it requests that share a beam width (`group_key`), so one `recommend_batch`
call — one encoder pass, one beam search — serves the whole batch; each request's own exclusions
and allow-list are masks inside the search.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from genrec.decoding.recommend import recommend_batch
from genrec.runtime import retrace_as_kept, usable_bf16
from genrec.serving.prefix_cache import PrefixCache
from genrec.serving.whole_search import WholeSearch, fits, saved_trace_scope


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
    bf16: bool = False        # bf16 autocast: ~2x throughput; of fp32's top-10 items tiger keeps 99.4-99.8 %, causal 98.4 %
                              # (fp32, with a warning, where matmuls have no bf16 kernels: runtime.usable_bf16)
    # torch.compile the decode path. tiger, and causal without the prefix cache: the whole search as
    # one call (serving/whole_search.py), ~1 min the first time on 2 cores; causal with it: prefill
    # and decode steps, 6-9 min the first time. A restart loads the traces from disk
    # (runtime.traces_kept_on_disk): 4-5 s and 12-14 s (the pieces in fp32 only).
    compile: bool = False
    prefix_cache_blocks: int = 0   # causal models: prompt KV blocks kept for returning users (0 = off)
    # Tokens per cached block. A hit prefills the prompt's tail after its last full cached block:
    # the new item's tokens plus the earlier prompt's partial block, ~(block - 1) / 2 on average.
    # 8 rather than vLLM's 16 (a GPU paging size; here blocks are tensors in a dict): on 2 AVX2
    # cores a returning user's eager prefill 2.67-2.78x -> 2.95-2.96x faster than without the cache.
    prefix_block_size: int = 8
    # A history longer than the model's window is cut at a start that moves in steps of this many
    # items (`window_start`): with the prefix cache, a returning user's prompt then keeps its start,
    # and its cached KV, for that many visits instead of none. 1: always the last max_history items.
    window_stride: int = 1
    device: str = "auto"      # "auto": CUDA when present, else CPU
    # On a GPU, tiger or causal without the prefix cache: the whole search as one CUDA graph per
    # batch bucket (serving/whole_search.py). On a CPU the same buckets run uncaptured (what the tests check).
    cuda_graphs: bool = False

    def __post_init__(self):
        if self.beam < 1 or self.prefix_cache_blocks < 0 or self.prefix_block_size < 1 or self.window_stride < 1:
            raise ValueError("beam must be >= 1, prefix_cache_blocks >= 0, prefix_block_size >= 1, "
                             "window_stride >= 1")
        if self.cuda_graphs and self.compile:
            raise ValueError("cuda_graphs and compile are alternatives: choose one")
        if self.cuda_graphs and self.prefix_cache_blocks:
            raise ValueError("cuda_graphs runs whole prompts: it cannot use the prefix cache (prefix_cache_blocks 0)")


def window_start(length: int, max_history: int, stride: int = 1) -> int:
    """Index of the first of `length` history items a prompt keeps. Stride 1: the last
    `max_history`. Stride s: the start moves only in steps of s, so as a history grows one item at
    a time its prompt starts the same way for s visits; the window holds between
    max_history - s + 1 and max_history items."""
    over = length - max_history
    return 0 if over <= 0 else -(-over // stride) * stride


class RunnerBase:
    """What the engine asks of a runner besides `run`: batching keys and prompt sizes."""

    prefix_cache = None

    def __init__(self, loaded, config: RunnerConfig | None = None):
        self.loaded, self.config = loaded, config or RunnerConfig()
        self.kind = loaded.kind
        if self.config.window_stride > loaded.data.max_history:
            raise ValueError(f"window_stride ({self.config.window_stride}) cannot exceed the run's max_history "
                             f"({loaded.data.max_history})")

    def windowed(self, requests: list[Request]) -> list[Request]:
        """The requests with each history cut where `window_stride` puts its window's start
        (their exclusions untouched: a history item outside the window is still never returned).
        Cutting twice cuts nothing more."""
        stride, limit = self.config.window_stride, self.loaded.data.max_history
        if stride == 1:   # the prompt keeps the last max_history items by itself
            return requests
        return [replace(r, history=r.history[window_start(len(r.history), limit, stride):]) for r in requests]

    def prompt_tokens(self, request: Request) -> int:
        """Tokens of the request's prompt: a batch pads its prompts to the longest and runs
        batch x longest tokens through the encoder or prefill."""
        data = self.loaded.data
        items = min(len(request.history), data.max_history)
        return items if self.kind == "sasrec" else 1 + items * data.item_tokens.shape[1]

    def group_key(self, request: Request) -> int:
        """Requests with equal keys can share one batch: the beam width."""
        return max(self.config.beam, request.k)

    def close(self) -> None:
        pass


class ModelRunner(RunnerBase):
    def __init__(self, loaded, config: RunnerConfig | None = None):
        from genrec.runtime import compile_for_decoding, traces_kept_on_disk

        super().__init__(loaded, config)
        wanted = self.config.device
        self.device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available()
                                   else "cpu" if wanted == "auto" else wanted)
        self.config = replace(self.config, bf16=usable_bf16(self.config.bf16, self.device.type))
        self.trie = loaded.trie
        if self.device.type != "cpu":   # the model and the trie on the device; requests stay host lists
            from genrec.decoding.trie_torch import TorchTrie

            loaded.model.to(self.device)
            if loaded.table is not None:
                self.trie = TorchTrie(loaded.table.trie, self.device)
        self.prefix_cache, self._cache_lock = None, threading.Lock()
        if self.kind == "causal":
            loaded.model.fuse_for_inference()
        if self.kind == "causal" and self.config.prefix_cache_blocks:
            self.prefix_cache = PrefixCache(self.config.prefix_block_size, self.config.prefix_cache_blocks)
        # The whole search as one compiled call (one graph per batch class instead of ~10 compiled
        # pieces with eager bookkeeping between them) or one CUDA graph per bucket. The prefix cache
        # prefills a prompt's new tokens only, in shapes of their own: it keeps the pieces.
        self.whole_search = None
        # What was compiled while traces were kept on disk must trace a class the walk missed as it
        # would have then (runtime.retrace_as_kept): else torch 2.13 fails that batch, and every later one.
        self._kept_traces = False
        whole = self.kind != "sasrec" and self.prefix_cache is None and fits(self.trie)
        if self.config.cuda_graphs or (self.config.compile and whole):
            self.whole_search = WholeSearch(loaded, self.trie, self.config.beam, self.device, self.config.bf16,
                                            mode="cuda_graphs" if self.config.cuda_graphs else "compiled")
            self._kept_traces = self.config.compile   # the compiled whole search always keeps its traces
        elif self.config.compile and self.kind != "sasrec":
            scope = saved_trace_scope(loaded, "pieces", self.config.bf16, self.device.type,
                                      self.config.prefix_block_size if self.prefix_cache else 0)
            # a restart loads them (causal: 12-14 s instead of 3-6 min); not in bf16, where the pieces
            # are called under autocast (runtime.traces_kept_on_disk)
            self._kept_traces = not self.config.bf16
            with traces_kept_on_disk(scope, enabled=self._kept_traces):
                compile_for_decoding(loaded.model)
                self.compile_shape_classes()

    @torch.no_grad()
    def run(self, requests: list[Request]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(items, scores) per request, best first, at most its k (fewer when filters leave fewer)."""
        beam = self.group_key(requests[0])
        if any(self.group_key(r) != beam for r in requests):
            raise ValueError("a batch must share its group key")
        k = max(r.k for r in requests)
        run, requests = self.loaded, self.windowed(requests)
        exclude = [r.exclude or [] for r in requests]
        include = None
        if any(r.include_only is not None for r in requests):
            include = [None if r.include_only is None else list(r.include_only) for r in requests]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16), \
                retrace_as_kept() if self._kept_traces else contextlib.nullcontext():
            if self.prefix_cache is not None:
                items, scores = self._run_cached(requests, k, beam, exclude, include)
            elif self.whole_search is not None and beam == self.whole_search.beam:   # else k > beam: ordinary
                items, scores = self.whole_search.run([r.user_idx for r in requests], [r.history for r in requests],
                                                exclude, include)
            else:
                items, scores = recommend_batch(run.model, run.kind, run.data, self.trie,
                                                [r.user_idx for r in requests], [r.history for r in requests],
                                                k=k, beam=beam, exclude_history=False, exclude=exclude,
                                                include_only=include)
        out = []
        for r, row_items, row_scores in zip(requests, items, scores):
            keep = row_items[: r.k] >= 0
            out.append((row_items[: r.k][keep], row_scores[: r.k][keep].astype(np.float32)))
        return out

    @torch.no_grad()
    def compile_shape_classes(self) -> None:
        """Compile every graph a decode can need, before any request waits for one.

        torch.compile(dynamic=True) still gives sizes 0 and 1 their own graphs: batch 1, a single
        beam (the first level; the last level's few extra beams of one request; k = 1), and the
        first decode positions. Real traffic reaches those classes at random, and each
        compilation stalls its batch for seconds: with two workers, admission then refused
        requests and p99 passed 2 s. So walk them all once here: 1 and 2 requests, 1 and 2
        beams, every level (TIGER, when its trie is too large for the whole-search path: 2 encoder
        and ~12 decode graphs, ~2 min on 2 cores), and with
        the prefix cache its prefills of misses and of hits with one and more new tokens, for 1
        and 2 requests (a batch's hits are prefilled together, its misses apart).
        Run with the thread count the workers will use: dynamo guards on it."""
        from genrec.decoding.steppers import CausalStepper, TigerStepper

        data, vocab = self.loaded.data, self.loaded.data.vocab
        stepper_class = TigerStepper if self.kind == "tiger" else CausalStepper
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            for batch in (1, 2):
                if self.prefix_cache is not None:   # prompt KV from the cache's prefill (these are misses)
                    scratch = PrefixCache(self.prefix_cache.block_size)
                    prompts = CausalStepper.from_prefill(self.loaded.model, vocab, *self._prefill(
                        [data.prompt(0, [0, 1])] * batch, scratch))
                else:
                    ids, mask = (t.to(self.device) for t in data.prompt_batch([0] * batch, [[0, 1]] * batch))
                    prompts = stepper_class(self.loaded.model, vocab, ids, mask)
                requests = torch.arange(batch, device=self.device)
                for width in (1, 2):
                    stepper = prompts.subset(requests)     # a fresh cache for each walk
                    stepper.step(None, 0)
                    for level in range(1, vocab.depth):
                        stepper.reorder(torch.zeros(batch, width, dtype=torch.long, device=self.device))
                        tokens = torch.full((batch, width), vocab.level_start(level - 1), device=self.device)
                        stepper.step(tokens, level)
            if self.prefix_cache is not None:   # prefills of hits with 1 and more new tokens, 1 and 2 prompts
                scratch = PrefixCache(self.prefix_cache.block_size)
                tokens = list(range(2, scratch.block_size + 4))
                self._prefill([tokens], scratch)
                for new_tokens in (1, 2):
                    for batch in (1, 2):
                        self._prefill([tokens[:scratch.block_size + new_tokens]] * batch, scratch)

    @torch.no_grad()
    def prefill(self, requests: list[Request]) -> tuple[torch.Tensor, list, torch.Tensor]:
        """Causal prompts through the prefix cache: first logits (B, 1, V), per-layer prompt KV
        (B, Hkv, T, hd) and its mask (B, T) (rows padded where it is 0)."""
        data = self.loaded.data
        prompts = [data.prompt(r.user_idx, r.history) for r in self.windowed(requests)]
        return self._prefill(prompts, self.prefix_cache)

    def _prefill(self, prompts: list[list[int]], cache: PrefixCache):
        """Each prompt's cached prefix is looked up and only the rest prefilled: one batch for the
        misses and one for the hits (a hit's few new tokens would otherwise be padded to a miss's
        whole prompt). The new full blocks are stored."""
        with self._cache_lock:   # the workers share the cache (an LRU dict); the prefill runs outside the lock
            found = [cache.lookup(tokens) for tokens in prompts]
        misses = [i for i, (cached, _) in enumerate(found) if not cached]
        hits = [i for i, (cached, _) in enumerate(found) if cached]
        groups = [rows for rows in (misses, hits) if rows]
        parts = [self._extend([prompts[i][found[i][0]:] for i in rows], [found[i][1] for i in rows])
                 for rows in groups]
        with self._cache_lock:
            for rows, (_, kv, _) in zip(groups, parts):
                for row, i in enumerate(rows):   # a row's new tokens are the last of its KV
                    new = len(prompts[i]) - found[i][0]
                    cache.insert(prompts[i], [(k[row:row + 1, :, -new:], v[row:row + 1, :, -new:]) for k, v in kv],
                                 start=found[i][0])
        if len(groups) == 1:
            return parts[0]
        kv, mask = _stack_left_padded([(kv, mask) for _, kv, mask in parts])
        back = torch.as_tensor(np.argsort(misses + hits), device=self.device)   # to the requests' order
        return (torch.cat([logits for logits, _, _ in parts])[back],
                [(k[back], v[back]) for k, v in kv], mask[back])

    def _extend(self, suffixes: list[list[int]], pasts: list):
        """One prefill of prompts' uncached tokens after their cached KV (all None or all given)."""
        model = self.loaded.model
        if len(suffixes) == 1:   # nothing to pad
            return model.extend(torch.as_tensor(suffixes[0], device=self.device)[None], past_kv=pasts[0])
        width = max(map(len, suffixes))
        ids = torch.full((len(suffixes), width), model.config.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(suffixes), width, dtype=torch.long)
        for row, tokens in enumerate(suffixes):
            ids[row, width - len(tokens):] = torch.as_tensor(tokens)
            mask[row, width - len(tokens):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if pasts[0] is None:
            return model.extend(ids, mask)
        past_kv, past_mask = _stack_left_padded(
            [(past, torch.ones(1, past[0][0].shape[-2], dtype=torch.long, device=self.device)) for past in pasts])
        return model.extend(ids, mask, past_kv, past_mask)

    def _run_cached(self, requests: list[Request], k: int, beam: int, exclude, include):
        """Causal prompts prefilled through the prefix cache, then one batched search."""
        from genrec.decoding.beam_search import constrained_beam_search
        from genrec.decoding.steppers import CausalStepper

        stepper = CausalStepper.from_prefill(self.loaded.model, self.loaded.data.vocab, *self.prefill(requests))
        result = constrained_beam_search(stepper, self.trie, beam=beam, k=k,
                                         n_items=self.loaded.data.num_items, exclude=exclude, include_only=include)
        return result.items.cpu().numpy(), result.scores.float().cpu().numpy()


def _stack_left_padded(parts: list[tuple[list, torch.Tensor]]) -> tuple[list, torch.Tensor]:
    """Groups of rows (per-layer (k, v) of shape (b, Hkv, t, hd), mask (b, t)) as one batch,
    each left-padded to the widest."""
    width = max(mask.shape[-1] for _, mask in parts)
    mask = torch.cat([F.pad(mask, (width - mask.shape[-1], 0)) for _, mask in parts])
    layers = [tuple(torch.cat([F.pad(kv[layer][j], (0, 0, width - kv[layer][j].shape[-2], 0)) for kv, _ in parts])
                    for j in (0, 1)) for layer in range(len(parts[0][0]))]
    return layers, mask
