"""The load generator against a real loopback socket server whose answers it must count: a
refusal that closes its connection (as uvicorn's own 503 does) is a response, not an error."""

from __future__ import annotations

import asyncio

from genrec.serving import loadgen


async def _serve_then_run(answer: bytes, phase) -> tuple[loadgen.PhaseResult, int]:
    """A server that reads one request per connection, sends `answer` and closes; run `phase(port)`."""
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        result = await phase(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
    return result, connections


def test_answers_that_close_the_connection_are_counted_with_their_status():
    bare_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 19\r\n"
                b"connection: close\r\n\r\nService Unavailable")
    result, connections = asyncio.run(_serve_then_run(
        bare_503, lambda port: loadgen.closed_loop(port, [b'{"k": 1}'], concurrency=4, duration_s=0.3)))
    answered = result.statuses[503]
    assert result.statuses == {503: answered} and answered >= 4
    assert result.errors == 0 and result.refusals_without_retry_after == answered
    assert connections == answered   # each answer closed its connection: never reused, never re-sent


def test_refusals_with_retry_after_are_counted_as_such():
    with_retry = (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n"
                  b"connection: close\r\n\r\n{}")
    result, connections = asyncio.run(_serve_then_run(
        with_retry, lambda port: loadgen.open_loop(port, [b"{}"], rate=200, duration_s=0.2)))
    assert set(result.statuses) == {429} and result.statuses[429] == connections
    assert result.errors == 0 and result.refusals_without_retry_after == 0


def test_a_phase_split_over_client_processes_adds_up():
    """Clients(2): each process offers half the level; the phase's counts are the sum of theirs,
    and each answer, with the server's latency, counted once."""
    ok = b'HTTP/1.1 200 OK\r\ncontent-length: 17\r\nconnection: close\r\n\r\n{"latency_ms": 1}'

    async def split(port: int, mode: str, level: float) -> loadgen.PhaseResult:
        with loadgen.Clients(2) as clients:   # blocking: run beside the server's event loop
            return await asyncio.get_running_loop().run_in_executor(
                None, clients.run, mode, port, [b'{"k": 1}', b'{"k": 2}'], level, 0.3)

    for mode, level in (("closed", 3), ("open", 100.0)):
        result, connections = asyncio.run(_serve_then_run(ok, lambda port: split(port, mode, level)))
        answered = result.statuses[200]
        assert result.mode == mode and result.level == level
        assert result.statuses == {200: answered} and answered == connections > 0
        assert len(result.latencies_ms) == answered and result.server_ms == [1.0] * answered
        assert result.errors == 0 and result.error_kinds == {}
