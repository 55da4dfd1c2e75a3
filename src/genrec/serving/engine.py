"""The serving engine: a bounded request queue, a scheduler that forms batches, worker threads
that run them (nano-vllm's split: `_schedule` -> `ModelRunner.run` -> futures). One worker with
all cores by default; on a small CPU two workers with one torch thread each run two batches side
by side, each handing its batch to a runner process of its own (`serving/workers.py`).

Requests arriving while a batch runs wait for the next step, which takes every compatible
request queued by then (up to `max_batch`): batch size follows the load, so one request alone is
answered at batch-1 latency and a burst is answered at batched throughput. Semantic IDs have a
fixed length, so the requests of a batch finish together and batching at request boundaries
loses no slots; interleaving encoder passes between decode levels would lengthen each request's
service unless the levels' work is fused (not built; the analysis is in docs/serving.md).

Admission control keeps admitted requests within their deadline: a request is refused at once
(`Overloaded`, HTTP 429 with Retry-After) when the queue is full or the wait predicted from the
measured service rate already exceeds its deadline; one that can no longer finish in time when
its turn comes (the deadline, less a margin for the answer's way out, passes before a batch as
slow as the slowest recent one, with headroom, would end) fails with `DeadlineExceeded` (HTTP
503) instead of occupying a batch and answering late.
"""

from __future__ import annotations

import contextvars
import math
import statistics
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass

from genrec.serving.runner import ModelRunner, Request


class Overloaded(Exception):
    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    pass


class EngineStopped(Exception):
    pass


@dataclass
class EngineConfig:
    max_batch: int = 32          # requests per step: larger raises throughput and per-step latency
    max_queue: int = 256         # waiting requests beyond which new ones are refused
    deadline_ms: float = 1000.0  # default per-request deadline, queueing included
    workers: int = 1             # threads running batches side by side (give each 1 torch thread)
    max_batch_tokens: int = 0    # token budget per step: batch x longest prompt (0: max_batch only)
    # Share of each deadline kept free at its end: a request's batch must end that long before
    # it, for the answer's way out (under 3x overload the event loop, busy refusing requests,
    # took up to ~100 ms of a 1 s deadline). A share, so short deadlines stay possible.
    answer_margin: float = 0.1
    # A batch may run this much slower than the slowest recent one (load shifts, the load
    # generator on the same cores): a request is only let into a batch with that headroom left.
    batch_time_headroom: float = 1.25

    def __post_init__(self):
        if self.max_batch < 1 or self.max_queue < 1 or self.deadline_ms <= 0 or self.workers < 1:
            raise ValueError("max_batch, max_queue and workers must be >= 1, deadline_ms > 0")
        if self.max_batch_tokens < 0 or not 0 <= self.answer_margin < 1 or self.batch_time_headroom < 1:
            raise ValueError("max_batch_tokens must be >= 0, answer_margin in [0, 1), batch_time_headroom >= 1")


@dataclass
class _Pending:
    request: Request
    future: Future
    enqueued: float
    deadline: float
    tokens: int                    # prompt tokens (the step's token budget)


def _fail(pending: _Pending, exc: Exception) -> None:
    if not pending.future.cancelled():   # the service gave up on it at its deadline
        pending.future.set_exception(exc)


class Engine:
    BATCH_TIMES_HORIZON_S = 5.0    # batch times older than this no longer inform admission

    def __init__(self, runner: ModelRunner, config: EngineConfig | None = None, observer=None):
        """observer: optional object with `batch(size, seconds)`, `queue_depth(n)` (metrics)."""
        self.runner, self.config, self.observer = runner, config or EngineConfig(), observer
        self._queue: deque[_Pending] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._busy = 0                     # workers running a batch
        # (finished at, seconds) of the last batches, for admission control. Only those of the
        # last few seconds count: a stale slow batch (a compilation, a pause) must not keep
        # refusing every request, since refused requests run no batch that would replace it.
        self._recent_batches: deque[tuple[float, float]] = deque(maxlen=9)
        # Each worker runs in a copy of the creating thread's context: torch.compile's settings
        # (dynamo's recompile limit, raised by `compile_for_decoding`) are context variables, and
        # a bare thread sees the defaults: with dynamo's limit of 8 the workers ran TIGER's later
        # decode shapes eager (engine open loop at 200 req/s: p50 808 ms instead of ~100 ms).
        self._threads = [threading.Thread(target=contextvars.copy_context().run, args=(self._loop,),
                                          name=f"genrec-engine-{i}", daemon=True)
                         for i in range(self.config.workers)]

    # -- client side ---------------------------------------------------------------------------

    def start(self) -> "Engine":
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, request: Request, deadline_ms: float | None = None, arrived: float | None = None) -> Future:
        """arrived: when the request reached the server (time.monotonic()), if earlier than now —
        the deadline counts from there, so time spent in HTTP parsing counts too."""
        now = time.monotonic()
        start = min(now, arrived if arrived is not None else now)
        budget = self._budget(deadline_ms) - (now - start)
        future: Future = Future()
        tokens = self.runner.prompt_tokens(request)
        with self._cv:
            if self._stopping:
                raise EngineStopped("the engine is shutting down")
            refusal = self._refusal(budget)
            if refusal is not None:
                raise refusal
            self._queue.append(_Pending(request, future, start, now + budget, tokens))
            self._cv.notify()
        return future

    def queue_depth(self) -> int:
        return len(self._queue)

    def overloaded_for(self, deadline_ms: float | None = None) -> Overloaded | None:
        """The refusal a request with this deadline would get now, if any — for shedding load
        before a body is even parsed."""
        with self._cv:
            return self._refusal(self._budget(deadline_ms))

    def deadline_s(self, deadline_ms: float | None) -> float:
        """A request's deadline in seconds from its arrival (the engine's default when None)."""
        return (deadline_ms or self.config.deadline_ms) / 1000

    def _budget(self, deadline_ms: float | None) -> float:
        """Seconds a request has for queueing and its batch: its deadline less the answer margin."""
        return self.deadline_s(deadline_ms) * (1 - self.config.answer_margin)

    def stop(self, drain: bool = True, timeout: float = 60.0) -> None:
        """Refuse new requests; finish the queued ones (drain) or fail them; join the worker."""
        with self._cv:
            self._stopping = True
            if not drain:
                while self._queue:
                    _fail(self._queue.popleft(), EngineStopped("the engine stopped"))
            self._cv.notify_all()
        for thread in self._threads:
            if thread.is_alive():   # never started: nothing to join
                thread.join(timeout)

    # -- worker side ---------------------------------------------------------------------------

    def _predicted_wait(self, waiting: int) -> float:
        """When a request admitted now would be answered: the batches now running (when no worker
        is free), the full batches for the requests ahead, and its own, shared among the workers,
        at the median time of recent batches (robust to a slow first batch; follows a change of
        load within a few batches)."""
        all_busy = self._busy >= self.config.workers
        times = self._batch_times()
        if not times or (waiting == 0 and not all_busy):
            return 0.0  # nothing measured lately, or a worker is free: admit
        batches = (waiting + self.config.max_batch) // self.config.max_batch
        rounds = math.ceil(batches / self.config.workers) + all_busy
        return rounds * statistics.median(times)

    def _refusal(self, budget: float) -> Overloaded | None:
        """Under the lock: why a request with `budget` seconds left must be refused now, if so;
        Retry-After is the predicted wait, at least a second."""
        waiting = len(self._queue)
        predicted = self._predicted_wait(waiting)
        retry_after = max(1.0, math.ceil(predicted))
        if waiting >= self.config.max_queue:
            return Overloaded(f"queue full ({waiting} requests waiting)", retry_after)
        if predicted > budget:
            return Overloaded(f"predicted wait {predicted * 1000:.0f} ms exceeds the deadline "
                              f"({budget * 1000:.0f} ms)", retry_after)
        return None

    def record_batch(self, seconds: float) -> None:
        with self._cv:   # admission reads these under the lock, while another worker may append
            self._recent_batches.append((time.monotonic(), seconds))

    def _batch_times(self) -> list[float]:
        horizon = time.monotonic() - self.BATCH_TIMES_HORIZON_S
        return [seconds for finished, seconds in self._recent_batches if finished >= horizon]

    def _schedule(self) -> list[_Pending]:
        """Under the lock: fail the requests that can no longer finish by their deadline (it
        passes before a batch as slow as the slowest recent one, with headroom, would end: a
        request let through must finish in time), then take the oldest request and every queued
        one that can share its batch, in arrival order, up to max_batch and within the token
        budget (batch x the longest prompt, which bounds the step's encoder/prefill work when
        prompts vary)."""
        now = time.monotonic() + self.config.batch_time_headroom * max(self._batch_times(), default=0.0)
        while self._queue and self._queue[0].deadline < now:
            _fail(self._queue.popleft(), DeadlineExceeded("deadline passes before a batch would end"))
        if not self._queue:
            return []
        key = self.runner.group_key(self._queue[0].request)
        budget = self.config.max_batch_tokens
        batch, rest, longest = [], deque(), 0
        while self._queue:
            pending = self._queue.popleft()
            fits = not budget or not batch or (len(batch) + 1) * max(longest, pending.tokens) <= budget
            if pending.deadline < now:
                _fail(pending, DeadlineExceeded("deadline passes before a batch would end"))
            elif len(batch) < self.config.max_batch and self.runner.group_key(pending.request) == key and fits:
                batch.append(pending)
                longest = max(longest, pending.tokens)
            else:
                rest.append(pending)
        self._queue = rest
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping and not self._queue:
                    return
                batch = self._schedule()
                self._busy += 1
            if self.observer is not None:
                self.observer.queue_depth(len(self._queue))
            try:
                if batch:
                    self._run(batch)
            finally:
                with self._cv:
                    self._busy -= 1

    def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]
        if not live:
            return
        start = time.monotonic()
        try:
            results = self.runner.run([p.request for p in live])
        except Exception as exc:  # a model failure fails this batch, never the engine
            for p in live:
                p.future.set_exception(exc)
            return
        seconds = time.monotonic() - start
        self.record_batch(seconds)
        if self.observer is not None:
            self.observer.batch(len(live), seconds)
        for p, result in zip(live, results):
            p.future.set_result(result)
