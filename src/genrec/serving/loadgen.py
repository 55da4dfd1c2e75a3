"""A small HTTP/1.1 load generator for loopback benchmarks: keep-alive connections on asyncio
streams (a few microseconds of client CPU per request — the client shares the cores with the
server), closed loop at a fixed concurrency or open loop with Poisson arrivals.
Each phase stops by itself after `duration_s` plus a drain timeout."""

from __future__ import annotations

import asyncio
import random
import re
import time
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
