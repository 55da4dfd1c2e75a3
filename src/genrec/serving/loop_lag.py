"""How late the server's event loop runs.

Every HTTP request costs the one event loop CPU (~0.5 ms to answer, ~0.17 ms to refuse on the
2-core CPU; `genrec bench serve`'s server_cpu_ms_per_response). When requests arrive faster than it can parse
them, all of them wait for the loop: an admitted request is answered late however fast its batch
ran, and the engine's admission, which sees batch times only, keeps admitting. On an H100 with
--cuda-graphs (batches of 128 in 14-22 ms) that is where the service broke: 2,000 req/s offered to
a loop that handles ~600 answered 45 (docs/serving.md). The lag tells the HTTP layer to refuse
before the engine is involved.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class LoopLag:
    """A task that sleeps `interval` seconds at a time and records how much later than asked it
    wakes; `seconds()` is the largest lag of the last `window` seconds, or the lateness of the
    next wake-up if that is larger (a saturated loop has not run the task yet)."""

    def __init__(self, interval: float = 0.02, window: float = 0.5, on_sample=None):
        """on_sample: called on the loop after each wake-up (the service publishes its gauges)."""
        self.interval, self.window, self.on_sample = interval, window, on_sample
        self._samples: deque[tuple[float, float]] = deque()   # (when, lag)
        self._last_wake = time.monotonic()
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """From a coroutine on the loop to watch; later calls do nothing."""
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._last_wake = time.monotonic()
            self._task = self.loop.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._samples.append((now, max(0.0, now - self._last_wake - self.interval)))
            self._last_wake = now
            while self._samples[0][0] < now - self.window:
                self._samples.popleft()
            if self.on_sample is not None:
                self.on_sample()

    def seconds(self) -> float:
        now = time.monotonic()
        overdue = now - self._last_wake - self.interval if self._task is not None else 0.0
        recent = max((lag for when, lag in self._samples if when >= now - self.window), default=0.0)
        return max(0.0, overdue, recent)
