"""The model runner: one batch of compatible requests -> their top-k lists, on a trained run.

The engine hands it requests that share a beam width (`group_key`), so one `recommend_batch`
call — one encoder pass, one beam search — serves the whole batch; each request's own exclusions
and allow-list are masks inside the search.
"""

from __future__ import annotations

import threading
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
    compile: bool = False     # torch.compile the decode path: +25 % bf16 (benchmarks/decode.py), ~90 s at start
    prefix_cache_blocks: int = 0   # causal models: prompt KV blocks kept for returning users (0 = off)
    prefix_block_size: int = 16
    device: str = "auto"      # "auto": CUDA when present, else CPU

    def __post_init__(self):
        if self.beam < 1 or self.prefix_cache_blocks < 0 or self.prefix_block_size < 1:
            raise ValueError("beam must be >= 1, prefix_cache_blocks >= 0, prefix_block_size >= 1")


class RunnerBase:
    """What the engine asks of a runner besides `run`: batching keys and prompt sizes."""

    prefix_cache = None

    def __init__(self, loaded, config: RunnerConfig | None = None):
        self.loaded, self.config = loaded, config or RunnerConfig()
        self.kind = loaded.kind

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
        from genrec.runtime import compile_for_decoding

        super().__init__(loaded, config)
        wanted = self.config.device
        self.device = torch.device("cuda" if wanted == "auto" and torch.cuda.is_available()
                                   else "cpu" if wanted == "auto" else wanted)
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
            from genrec.serving.prefix_cache import PrefixCache

            self.prefix_cache = PrefixCache(self.config.prefix_block_size, self.config.prefix_cache_blocks)
        if self.config.compile and self.kind != "sasrec":
            compile_for_decoding(loaded.model)
            self.compile_shape_classes()

    @torch.no_grad()
    def run(self, requests: list[Request]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(items, scores) per request, best first, at most its k (fewer when filters leave fewer)."""
        beam = self.group_key(requests[0])
        if any(self.group_key(r) != beam for r in requests):
            raise ValueError("a batch must share its group key")
        k = max(r.k for r in requests)
        run = self.loaded
        exclude = [r.exclude or [] for r in requests]
        include = None
        if any(r.include_only is not None for r in requests):
            include = [None if r.include_only is None else list(r.include_only) for r in requests]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            if self.prefix_cache is not None:
                items, scores = self._run_cached(requests, k, beam, exclude, include)
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
        beams, every level (TIGER: 2 encoder and ~12 decode graphs, ~2 min on 2 cores), and with
        the prefix cache its prefills of a miss and of hits with one and more new tokens.
        Run with the thread count the workers will use: dynamo guards on it."""
        from genrec.decoding.steppers import CausalStepper, TigerStepper

        data, vocab = self.loaded.data, self.loaded.data.vocab
        stepper_class = TigerStepper if self.kind == "tiger" else CausalStepper
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            for batch in (1, 2):
                ids, mask = (t.to(self.device) for t in data.prompt_batch([0] * batch, [[0, 1]] * batch))
                if self.prefix_cache is not None:   # every request's prompt KV then comes from `extend`
                    prefills = [self.loaded.model.extend(ids[i:i + 1]) for i in range(batch)]
                    prompts = self._stepper_from_prefills(prefills)
                else:
                    prompts = stepper_class(self.loaded.model, vocab, ids, mask)
                requests = torch.arange(batch, device=self.device)
                for width in (1, 2):
                    stepper = prompts.subset(requests)     # a fresh cache for each walk
                    stepper.step(None, 0)
                    for level in range(1, vocab.depth):
                        stepper.reorder(torch.zeros(batch, width, dtype=torch.long, device=self.device))
                        tokens = torch.full((batch, width), int(vocab.level_offsets[level - 1]), device=self.device)
                        stepper.step(tokens, level)
            if self.prefix_cache is not None:   # prefills: a miss (no past), and hits of 1 and more new tokens
                from genrec.serving.prefix_cache import PrefixCache

                scratch = PrefixCache(self.prefix_cache.block_size)   # past KV exactly as lookups give it
                block = scratch.block_size
                tokens = list(range(2, block + 4))
                _, kv = self.loaded.model.extend(torch.tensor([tokens], device=self.device))
                scratch.insert(tokens, kv)
                for new_tokens in (1, 2):
                    _, past = scratch.lookup(tokens[:block + new_tokens])
                    self.loaded.model.extend(torch.tensor([tokens[block:block + new_tokens]], device=self.device), past)

    @torch.no_grad()
    def prefill(self, request: Request) -> tuple[torch.Tensor, list]:
        """A causal prompt's last logits and KV, reusing the cached blocks of its prefix."""
        tokens = self.loaded.data.prompt(request.user_idx, request.history)
        with self._cache_lock:   # engine workers share the cache (an LRU dict)
            cached, past = self.prefix_cache.lookup(tokens)
            suffix = torch.as_tensor(tokens[cached:], dtype=torch.long, device=self.device)[None]
            logits, kv = self.loaded.model.extend(suffix, past)
            self.prefix_cache.insert(tokens, kv)
        return logits, kv

    def _run_cached(self, requests: list[Request], k: int, beam: int, exclude, include):
        """Causal prompts prefilled one by one through the prefix cache, then one batched search
        over their left-padded KV."""
        from genrec.decoding.beam_search import constrained_beam_search

        stepper = self._stepper_from_prefills([self.prefill(r) for r in requests])
        result = constrained_beam_search(stepper, self.trie, beam=beam, k=k,
                                         n_items=self.loaded.data.num_items, exclude=exclude, include_only=include)
        return result.items.cpu().numpy(), result.scores.float().cpu().numpy()

    def _stepper_from_prefills(self, prefilled: list):
        """One causal stepper over prompts prefilled one by one ((last logits, per-layer KV)
        each), their KV left-padded into one batch."""
        from genrec.decoding.steppers import CausalStepper

        width = max(kv[0][0].shape[-2] for _, kv in prefilled)
        mask = torch.zeros(len(prefilled), width, dtype=torch.long, device=self.device)
        layers = []
        for layer in range(len(prefilled[0][1])):
            k0 = prefilled[0][1][layer][0]
            keys = k0.new_zeros(len(prefilled), k0.shape[1], width, k0.shape[-1])
            values = torch.zeros_like(keys)
            for i, (_, kv) in enumerate(prefilled):
                t = kv[layer][0].shape[-2]
                keys[i, :, width - t:], values[i, :, width - t:] = kv[layer][0][0], kv[layer][1][0]
                mask[i, width - t:] = 1
            layers.append((keys, values))
        first = torch.cat([logits for logits, _ in prefilled])
        return CausalStepper.from_prefill(self.loaded.model, self.loaded.data.vocab, first, layers, mask)
