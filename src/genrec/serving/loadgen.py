"""A small HTTP/1.1 load generator for loopback benchmarks: keep-alive connections on asyncio
streams, closed loop at a fixed concurrency or open loop with Poisson arrivals. Each phase stops
by itself after `duration_s` plus a drain timeout.

The client's own CPU per request is what limits it: against a server that answers at once, on a
2-core machine, ~70 µs closed loop (~14,900 requests/s) but 0.15-0.3 ms open loop, where arrivals
that find every connection busy open new ones -- hundreds a second past ~3,000 requests/s offered,
and then its p99 against a server that answers in 0.5 ms is its own: from 4 ms to 1 s, run to run. `Clients(k)`
runs a phase in k processes at once, each offering a k-th of the load (Poisson arrivals split
among them are still Poisson), for servers that answer thousands a second (a GPU's)."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np


_SERVER_MS = re.compile(rb'"latency_ms":\s*([0-9.eE+-]+)')


@dataclass
class PhaseResult:
    mode: str                      # "closed" or "open"
    level: float                   # concurrency or offered requests/s
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)   # of 200 responses, at the client
    server_ms: list[float] = field(default_factory=list)      # their `latency_ms`: arrival -> answer in the server
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0                # connection failures and timeouts
    refusals_without_retry_after: int = 0   # 429/503 answers lacking the Retry-After header
    error_kinds: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        ok = np.asarray(self.latencies_ms)
        return {"mode": self.mode, "level": self.level, "seconds": round(self.seconds, 2),
                "ok": int(len(ok)), "throughput_req_per_s": round(len(ok) / self.seconds, 1),
                "p50_ms": round(float(np.percentile(ok, 50)), 1) if len(ok) else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 1) if len(ok) else None,
                "max_ms": round(float(ok.max()), 1) if len(ok) else None,
                "server_p99_ms": round(float(np.percentile(self.server_ms, 99)), 1) if self.server_ms else None,
                "server_max_ms": round(float(max(self.server_ms)), 1) if self.server_ms else None,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "errors": self.errors,
                "error_kinds": dict(self.error_kinds),
                "refusals_without_retry_after": self.refusals_without_retry_after}


class _Connection:
    def __init__(self, reader, writer):
        self.reader, self.writer, self.closed = reader, writer, False

    async def post(self, path: str, body: bytes) -> tuple[int, bool, bytes]:
        """(status, whether a Retry-After header came back, body). A response that closes the
        connection (`Connection: close`) still counts; the connection is then not reused."""
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, close, retry_after = 0, False, False
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "retry-after":
                retry_after = True
        payload = await self.reader.readexactly(length)
        self.closed = close
        return status, retry_after, payload

    def close(self):
        self.writer.close()


class _Pool:
    def __init__(self, port: int):
        self.port, self.idle = port, []

    async def post(self, path: str, body: bytes, timeout: float) -> tuple[int, bool, bytes]:
        if self.idle:
            try:
                return await self._send(self.idle.pop(), path, body, timeout)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
                pass   # the server closed this keep-alive connection while it sat idle (uvicorn:
                # after 5 s); like any HTTP client, send again once on a fresh connection
        conn = _Connection(*await asyncio.open_connection("127.0.0.1", self.port))
        return await self._send(conn, path, body, timeout)

    async def _send(self, conn: _Connection, path: str, body: bytes, timeout: float) -> tuple[int, bool, bytes]:
        try:
            answer = await asyncio.wait_for(conn.post(path, body), timeout)
        except BaseException:
            conn.close()
            raise
        if conn.closed:
            conn.close()
        else:
            self.idle.append(conn)
        return answer

    def close(self):
        for conn in self.idle:
            conn.close()


async def _one(pool: _Pool, body: bytes, result: PhaseResult, timeout: float) -> None:
    start = time.perf_counter()
    try:
        status, retry_after, payload = await pool.post("/v1/recommend", body, timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        result.errors += 1
        result.error_kinds[type(exc).__name__] = result.error_kinds.get(type(exc).__name__, 0) + 1
        return
    result.statuses[status] = result.statuses.get(status, 0) + 1
    if status in (429, 503) and not retry_after:
        result.refusals_without_retry_after += 1
    if status == 200:
        result.latencies_ms.append((time.perf_counter() - start) * 1000)
        found = _SERVER_MS.search(payload)
        if found:
            result.server_ms.append(float(found.group(1)))


async def closed_loop(port: int, bodies: list[bytes], concurrency: int, duration_s: float,
                      timeout: float = 30.0) -> PhaseResult:
    result = PhaseResult("closed", concurrency, 0.0)
    pool, stop = _Pool(port), time.perf_counter() + duration_s
    start = time.perf_counter()

    async def worker(w: int):
        i = w
        while time.perf_counter() < stop:
            await _one(pool, bodies[i % len(bodies)], result, timeout)
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    result.seconds = time.perf_counter() - start
    pool.close()
    return result


async def open_loop(port: int, bodies: list[bytes], rate: float, duration_s: float, seed: int = 0,
                    timeout: float = 30.0) -> PhaseResult:
    """Poisson arrivals at `rate` per second for `duration_s`, whatever the server's pace."""
    result = PhaseResult("open", rate, 0.0)
    pool, rng = _Pool(port), random.Random(seed)
    start = time.perf_counter()
    tasks, next_at, i = [], start, 0
    while next_at < start + duration_s:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(pool, bodies[i % len(bodies)], result, timeout)))
        i += 1
        next_at += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    result.seconds = max(duration_s, time.perf_counter() - start)
    pool.close()
    return result


def merged(parts: list[PhaseResult]) -> PhaseResult:
    """One phase of the parts that client processes ran side by side: their levels add up."""
    result = PhaseResult(parts[0].mode, sum(p.level for p in parts), max(p.seconds for p in parts))
    for part in parts:
        result.latencies_ms += part.latencies_ms
        result.server_ms += part.server_ms
        result.errors += part.errors
        result.refusals_without_retry_after += part.refusals_without_retry_after
        for counts, more in ((result.statuses, part.statuses), (result.error_kinds, part.error_kinds)):
            for key, n in more.items():
                counts[key] = counts.get(key, 0) + n
    return result


def _phase(mode: str, port: int, bodies: list[bytes], level: float, duration_s: float, seed: int,
           timeout: float) -> PhaseResult:
    if mode == "closed":
        return asyncio.run(closed_loop(port, bodies, int(level), duration_s, timeout))
    return asyncio.run(open_loop(port, bodies, level, duration_s, seed, timeout))


class Clients:
    """Runs each phase in `processes` client processes at once (1: in this one), each offering a
    share of the level: a closed loop's concurrency split as evenly as it goes, an open loop's
    rate divided, each with arrivals of its own seed."""

    def __init__(self, processes: int = 1):
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.processes, self._pool = processes, None
        if processes > 1:
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
            # Start every process now (each task holds one for a moment), not in the first phase,
            # whose shares would then start a process start-up apart.
            for done in [self._pool.submit(time.sleep, 0.5) for _ in range(processes)]:
                done.result()

    def run(self, mode: str, port: int, bodies: list[bytes], level: float, duration_s: float,
            timeout: float = 30.0) -> PhaseResult:
        """mode "closed" (level: concurrency) or "open" (level: requests/s)."""
        if self._pool is None:
            return _phase(mode, port, bodies, level, duration_s, 0, timeout)
        k = self.processes
        shares = ([int(level) // k + (i < int(level) % k) for i in range(k)] if mode == "closed"
                  else [level / k] * k)
        futures = [self._pool.submit(_phase, mode, port, bodies[i:] + bodies[:i], share, duration_s, i, timeout)
                   for i, share in enumerate(shares) if share > 0]
        return merged([f.result() for f in futures])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()
