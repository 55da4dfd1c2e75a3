"""What the HTTP layer calls: item-id translation, histories, filters, popularity fallback and
the engine, independent of FastAPI (so offline batch inference uses the same path)."""

from __future__ import annotations

import asyncio
import statistics
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import numpy as np

from genrec.serving.engine import DeadlineExceeded, Engine, EngineConfig
from genrec.serving.history import HistoryStore
from genrec.serving.loop_lag import LoopLag
from genrec.serving.metrics import ServingMetrics
from genrec.serving.runner import ModelRunner, Request, RunnerConfig


async def _engine_answer(future: Future, timeout_s: float):
    """The engine's answer to one request, or DeadlineExceeded after timeout_s; then the request
    is cancelled, and the engine skips it if its batch has not started. (What wait_for(wrap_future())
    does, at half its CPU: ~60 instead of ~120 µs per request on uvloop, measured in isolation.)"""
    loop = asyncio.get_running_loop()
    answer = loop.create_future()

    def deliver(done: Future) -> None:   # on the engine's thread
        try:
            loop.call_soon_threadsafe(_settle, answer, done)
        except RuntimeError:   # the event loop has closed: nobody waits
            pass

    future.add_done_callback(deliver)
    timer = loop.call_later(max(0.0, timeout_s), _expire, answer)
    try:
        return await answer
    finally:
        timer.cancel()
        future.cancel()   # a no-op once its batch has started


def _settle(answer: asyncio.Future, done: Future) -> None:
    if answer.done() or done.cancelled():   # the deadline came first
        return
    if done.exception() is not None:
        answer.set_exception(done.exception())
    else:
        answer.set_result(done.result())


def _expire(answer: asyncio.Future) -> None:
    if not answer.done():
        answer.set_exception(DeadlineExceeded("the deadline passed before the batch ended"))


@dataclass
class ServiceConfig:
    runner: RunnerConfig
    engine: EngineConfig
    db_path: Path | None = None          # default: RUN/serving/events.sqlite
    api_key: str | None = None           # required as `Authorization: Bearer KEY` or `X-API-Key` when set
    max_body_bytes: int = 64 * 1024
    max_history: int = 1000              # items accepted in a request's history or event list
    worker_processes: bool = False       # the engine's workers run the model in processes of their own
    threads_per_worker: int = 1          # torch threads of each worker process
    # > 0: engine.max_batch is a ceiling, and start-up keeps the largest batch it timed within this
    # many ms (the same run is 3 requests a batch on one CPU and 128 on another: see fitting_batch).
    batch_time_target_ms: float = 0.0
    max_in_flight: int = 0               # requests in the server at once before 429 + Retry-After (0: 4 x max_queue)
    # > 0: a recommend arriving while the event loop runs this late is refused (429 + Retry-After),
    # since its answer would be late however fast its batch ran. Off by default: for servers whose
    # event loop, not the model, is the limit (a GPU with --cuda-graphs; loop_lag.py).
    max_loop_lag_ms: float = 0.0

    def __post_init__(self):
        self.max_in_flight = self.max_in_flight or 4 * self.engine.max_queue
        if self.max_body_bytes < 1024 or self.max_history < 1 or self.threads_per_worker < 1:
            raise ValueError("max_body_bytes must be >= 1024, max_history and threads_per_worker >= 1")
        if self.batch_time_target_ms < 0 or self.max_loop_lag_ms < 0:
            raise ValueError("batch_time_target_ms and max_loop_lag_ms must be >= 0")
        if self.worker_processes and self.runner.prefix_cache_blocks:
            raise ValueError("the prefix cache is shared by the engine's workers: run them as threads")


WARM_UP_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)


def fitting_batch(batch_ms: dict[int, float], target_ms: float) -> int:
    """The largest batch size whose time is within target_ms (at least 1). A request that just
    missed a batch's start waits for it, then runs in the next one: ~2 batch times. On the
    AVX-512 CPU compiled bf16 batches of 8 took ~55 ms and kept p99 at 89 ms through HTTP; on an
    AVX2-only CPU (fp32) a batch of 8 took 138 ms, and batches of 3 (~60 ms) kept p99 at 88 ms
    at 50 req/s in the engine (docs/serving.md)."""
    return max([size for size, ms in batch_ms.items() if ms <= target_ms], default=1)


@dataclass
class Recommendation:
    items: list[dict]
    unknown_items: list[str]
    fallback: bool
    latency_ms: float


class RecommendService:
    def __init__(self, loaded, config: ServiceConfig):
        from genrec.evaluation.harness import train_item_counts

        self.loaded, self.config = loaded, config
        self.metrics = ServingMetrics()
        # The HTTP layer's event loop, watched once it serves (app.py); each of its wake-ups (every
        # 20 ms) and each scrape set the lag and in-flight gauges (publish_gauges).
        self.loop_lag = LoopLag(on_sample=self.publish_gauges)
        self.in_flight = 0          # HTTP requests in the server (app.py's Front counts them)
        items = loaded.dataset.items
        self.item_ids = items["item_id"].astype(str).to_numpy()
        self.titles = items["title"].astype(str).to_numpy()
        self.item_index = {iid: i for i, iid in enumerate(self.item_ids)}
        self._descriptions: dict[int, dict] = {}   # describe()'s rows without a score
        counts = train_item_counts(loaded.dataset)
        self.popular = np.lexsort((np.arange(len(counts)), -counts))   # most trained-on first, ties by index
        self.store = HistoryStore(loaded.dataset, config.db_path or Path(loaded.path) / "serving" / "events.sqlite")
        if config.worker_processes:
            from genrec.serving.workers import ProcessRunner

            self.runner = ProcessRunner(loaded, config.runner, config.engine.workers, config.threads_per_worker)
        else:
            self.runner = ModelRunner(loaded, config.runner)
        self.warm_up_batch_ms = self._warm_up()
        if config.batch_time_target_ms:
            size = fitting_batch(self.warm_up_batch_ms, config.batch_time_target_ms)
            self.config = config = replace(config, engine=replace(config.engine, max_batch=size))
        if self.runner.prefix_cache is not None:
            self.metrics.attach_prefix_cache(self.runner.prefix_cache)
        self.engine = Engine(self.runner, config.engine, observer=self.metrics).start()

    def _warm_up(self) -> dict[int, float]:
        """Answer real requests (dataset users, history excluded) at a few batch sizes before
        taking traffic: the first batches of each size pay first-call costs
        (allocations, filters) that the first users must not. With --compile the runner has
        already compiled every shape class (`ModelRunner.compile_shape_classes`); when warm-up was
        one 1-item history and nothing else, classes compiled under traffic and admission refused
        5,172 requests (503) in 15 s at concurrency 1. Sizes: 1, 2, 3 and max_batch; with a batch
        time target, rising sizes up to max_batch until one takes longer than the target. Each size
        runs once per worker, then twice more, timed: returns each size's mean time of those two, in ms."""
        ceiling, target = self.config.engine.max_batch, self.config.batch_time_target_ms
        # Worker processes take batches in turn and each pays its own first call at every size.
        first_calls = self.config.engine.workers if self.config.worker_processes else 1
        sizes = [s for s in WARM_UP_SIZES if s < ceiling] + [ceiling] if target else sorted({1, 2, 3, ceiling})
        histories = list(islice(filter(None, map(self.store.history, self.store.user_index)),
                                (first_calls + 2) * sum(sizes)))
        times, offset = {}, 0
        for size in sizes if histories else ():
            runs = []
            for _ in range(first_calls + 2):   # other users each time: with the prefix cache, a repeat is a hit
                batch = [histories[(offset + i) % len(histories)] for i in range(size)]
                offset += size
                started = time.perf_counter()
                self.runner.run([Request(0, h, k=10, exclude=h) for h in batch])
                runs.append(1000 * (time.perf_counter() - started))
            times[size] = round(statistics.mean(runs[first_calls:]), 2)
            if target and times[size] > target:   # larger batches take longer still
                break
        return times

    def publish_gauges(self) -> None:
        self.metrics.loop_lag.set(self.loop_lag.seconds())
        self.metrics.in_flight.set(self.in_flight)

    def close(self) -> None:
        self.engine.stop(drain=True)
        self.runner.close()
        self.store.close()

    # -- translation ---------------------------------------------------------------------------

    def indices(self, item_ids) -> tuple[list[int], list[str]]:
        """Known item indices in order, and the unknown ids (ignored)."""
        known, unknown = [], []
        for iid in map(str, item_ids):
            idx = self.item_index.get(iid)
            (known.append(idx) if idx is not None else unknown.append(iid))
        return known, unknown

    def describe(self, idx: int, score: float | None = None) -> dict:
        # Made once per item: building the semantic-ID string took ~4 % of the server process's
        # time under load (py-spy), ten times per answer.
        row = self._descriptions.get(idx)
        if row is None:
            table = self.loaded.table
            row = self._descriptions[idx] = {"item_id": str(self.item_ids[idx]), "title": str(self.titles[idx]),
                                             "semantic_id": table.token_strings(idx) if table is not None else None}
        return row if score is None else {**row, "score": float(score)}

    # -- requests ------------------------------------------------------------------------------

    def build_request(self, user_id: str | None, history_ids, k: int, exclude_history: bool,
                      exclude_ids, include_ids) -> tuple[Request, list[str]]:
        unknown: list[str] = []
        if user_id is not None:
            history = self.store.history(user_id)
            user_idx = self.store.user_index.get(user_id, 0)   # new users share user token 0
        else:
            history, unknown = self.indices(history_ids or [])
            user_idx = 0                                      # as `genrec recommend --history`
        exclude, unknown_ex = self.indices(exclude_ids or [])
        include = None
        if include_ids is not None:
            include_list, unknown_in = self.indices(include_ids)
            include = tuple(sorted(set(include_list)))
            unknown += unknown_in
        unknown += unknown_ex
        if exclude_history:
            exclude = history + exclude
        return Request(user_idx, history, k, exclude, include), unknown

    def popularity(self, request: Request) -> list[dict]:
        banned = set(request.exclude or ())
        allowed = None if request.include_only is None else set(request.include_only)
        rows = []
        for idx in self.popular:
            if idx in banned or (allowed is not None and idx not in allowed):
                continue
            rows.append(self.describe(int(idx), score=0.0))
            if len(rows) == request.k:
                break
        return rows

    async def recommend(self, request: Request, unknown: list[str], deadline_ms: float | None = None,
                        arrived: float | None = None) -> Recommendation:
        """deadline_ms: this request's (default: the engine's); arrived: time.monotonic() when it
        reached the server. latency_ms counts from then (or from this call).

        The deadline is a promise, as in gRPC: the engine plans every batch to end well before it,
        and if a batch still runs late (the cores are shared), the request fails with
        DeadlineExceeded at its deadline instead of answering after it."""
        start = min(time.monotonic(), arrived) if arrived is not None else time.monotonic()
        if not request.history:
            self.metrics.fallbacks.inc()
            items, fallback = self.popularity(request), True
        else:
            deadline = start + self.engine.deadline_s(deadline_ms)
            found, scores = await _engine_answer(self.engine.submit(request, deadline_ms, arrived),
                                                 deadline - time.monotonic())
            if time.monotonic() > deadline:   # ready in time, but the event loop resumed us late
                raise DeadlineExceeded("the deadline passed before the answer could be sent")
            items, fallback = [self.describe(int(i), s) for i, s in zip(found, scores)], False
        seconds = time.monotonic() - start
        self.metrics.latency.observe(seconds)
        return Recommendation(items, unknown, fallback, round(seconds * 1000, 2))

    def add_events(self, user_id: str, item_ids, timestamp: float | None) -> tuple[int, list[str]]:
        known, unknown = self.indices(item_ids)
        self.store.append(user_id, known, timestamp)
        return len(known), unknown
