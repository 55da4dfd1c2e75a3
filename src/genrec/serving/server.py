"""`genrec serve`: the service on uvicorn, drained on SIGTERM/SIGINT; with `processes` > 1, that
many copies of it on one port.

One process serves through one event loop, which parses, validates and answers every request:
~1 ms of CPU each, the GIL shared with the engine's thread. On a CPU the model is the limit long
before that; on a GPU with --cuda-graphs the engine alone answers ~4,000 requests/s and one loop
~1,000 (docs/serving.md). `--http-processes N` starts N server processes (`_replica_main`), each
with its own loop, engine and copy of the model, listening on the same port with SO_REUSEPORT:
the kernel spreads connections among them. They share the SQLite event store (each read takes
the others' new events, history.py) and /metrics (prometheus_client's multiprocess files,
metrics.py). This process only supervises: it holds the port, forwards SIGTERM/SIGINT, restarts a
process that dies, and exits 0 once all have drained.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import traceback
from pathlib import Path

import uvicorn

from genrec.errors import GenrecError
from genrec.serving.service import RecommendService, ServiceConfig


class DrainingServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the
    signal (status -15) before the engine drained; here a signal only starts the shutdown."""

    on_started = None   # called once it listens

    def handle_exit(self, sig, frame) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True   # a second Ctrl-C: stop waiting for open connections
        self.should_exit = True

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.on_started is not None and self.started:
            self.on_started()


def _raise_open_files_limit() -> None:
    """A connection is a file descriptor: where the soft limit is the usual 1,024, raise it to the
    hard limit, so that load past the in-flight cap gets 429s rather than failed accepts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard   # Linux refuses an infinite one
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):   # past the kernel's nr_open: keep the soft limit
            pass


def serve(run: str | Path, config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000,
          log=print, access_log: bool = False, processes: int = 1) -> None:
    """Blocks until SIGTERM/SIGINT; uvicorn then stops accepting, lets in-flight requests finish,
    and the engine drains its queue before the process exits (status 0). processes > 1: that many
    server processes on the port, this one supervising them (module docstring)."""
    if processes > 1:
        return _serve_processes(run, config, host, port, log, access_log, processes)
    _serve_one(run, config, host, port, log, access_log)


def _serve_one(run, config: ServiceConfig, host: str, port: int, log, access_log: bool, sock=None,
               before_listening=None, on_started=None) -> None:
    from genrec.runtime import tune_allocator
    from genrec.serving.app import create_app
    from genrec.training.run import load_run

    tune_allocator()
    _raise_open_files_limit()
    # Engine workers hold the GIL between torch ops; a shorter switch interval lets the event
    # loop in sooner (c=16 on 2 cores: 116 -> 134 req/s, open-loop p99 131 -> 117 ms).
    sys.setswitchinterval(0.001)
    loaded = load_run(run)
    try:
        service = RecommendService(loaded, config)
    except ValueError as exc:   # options that do not fit this run (e.g. a window stride past its window)
        raise GenrecError(str(exc)) from None
    try:
        app = create_app(service)
        if config.batch_time_target_ms:
            timed = ", ".join(f"{size}: {ms} ms" for size, ms in service.warm_up_batch_ms.items())
            log(f"max batch {service.config.engine.max_batch}: the largest within "
                f"{config.batch_time_target_ms:.0f} ms at start-up ({timed})")
        if sock is None:
            log(f"genrec serving {loaded.kind} from {run} on http://{host}:{port} (API docs: /docs, "
                f"events: {service.store.path})")
        # No uvicorn connection cap (limit_concurrency): it counts open connections, keep-alive
        # ones included, and answers past them a bare 503 with no Retry-After, logging a warning
        # for each (~1,700 of them filled the 64 KiB pipe of a server whose stderr nobody read,
        # and its event loop stopped). Requests past the app's in-flight cap get 429 and
        # Retry-After instead; idle connections close after uvicorn's 5 s keep-alive.
        server = DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                               access_log=access_log, timeout_graceful_shutdown=30))
        server.on_started = on_started
        if before_listening is not None:
            before_listening()
        server.run(sockets=None if sock is None else [sock])
    finally:
        service.close()


def _port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that others of this user may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _replica_main(index: int, run, config: ServiceConfig, host: str, port: int, access_log: bool, conn,
                  supervisor: int) -> None:
    """One of --http-processes: says "loaded" once its model is ready, listens when told to
    (all of them at once, so that /healthz answers only when every process serves), says "ready"."""
    if sys.platform.startswith("linux"):   # a SIGTERM (a drain) if the supervisor dies, even by SIGKILL
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
        if os.getppid() != supervisor:   # it died before that
            return
    name = f"[http process {index}] "

    def listen_when_told() -> None:
        conn.send(("loaded", None))
        conn.recv()

    try:
        import torch

        torch.set_num_threads(config.threads_per_worker)   # a spawned interpreter starts with all cores
        sock = _port_socket(host, port)
        _serve_one(run, config, host, port, lambda line: print(name + line, flush=True), access_log, sock=sock,
                   before_listening=listen_when_told, on_started=lambda: conn.send(("ready", None)))
    except BaseException as exc:
        if not isinstance(exc, (GenrecError, KeyboardInterrupt, SystemExit)):   # else a bug: its trace
            traceback.print_exc()
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise SystemExit(1) from None


def _serve_processes(run, config: ServiceConfig, host: str, port: int, log, access_log: bool,
                     processes: int) -> None:
    # Held (bound, never listening) for the server's life: the port stays ours between a process's
    # death and its replacement, and port 0 gets the number the processes then share.
    try:
        holder = _port_socket(host, port)
    except OSError as exc:
        raise GenrecError(f"cannot serve on {host}:{port}: {exc}") from None
    port = holder.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="genrec-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir   # inherited by the processes (metrics.py)
    context = multiprocessing.get_context("spawn")   # never fork a process holding torch threads
    running: dict[int, multiprocessing.Process] = {}
    stopping = False

    def launch(index: int):
        """Start process `index` and wait until its model is loaded: its pipe, or why it failed."""
        parent, child = context.Pipe()
        process = running[index] = context.Process(
            target=_replica_main, name=f"genrec-http-{index}",
            args=(index, run, config, host, port, access_log, child, os.getpid()))
        process.start()
        child.close()
        return parent, expect(process, parent, "loaded")

    def expect(process, conn, wanted: str) -> str | None:
        try:
            status, message = conn.recv()
        except EOFError:
            process.join()
            status, message = "error", f"exited with status {process.exitcode}"
        return None if status == wanted else message

    def start(indices) -> str | None:
        """Load the processes one after the other (their start-up times batches: alone, it is not
        skewed), then let all listen at once. None, or why one failed."""
        pipes = {}
        try:
            for index in indices:
                pipes[index], error = launch(index)
                if error is not None:
                    return error
            for index, conn in pipes.items():
                try:
                    conn.send("listen")
                except OSError:
                    return f"process {index} exited before it listened"
            for index, conn in pipes.items():
                if (error := expect(running[index], conn, "ready")) is not None:
                    return error
        finally:
            for conn in pipes.values():
                conn.close()
        return None

    def stop(*_) -> None:
        nonlocal stopping
        stopping = True
        for process in running.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if (error := start(range(processes))) is not None:
            if stopping:
                return
            raise GenrecError(f"an HTTP process failed to start: {error}")
        log(f"genrec serving from {run} on http://{host}:{port} in {processes} HTTP processes "
            f"(pids {', '.join(str(p.pid) for p in running.values())}; API docs: /docs)")
        unclean = 0
        while running:
            multiprocessing.connection.wait([p.sentinel for p in running.values()])
            for index, process in list(running.items()):
                if process.is_alive():
                    continue
                del running[index]
                _mark_dead(process.pid, metrics_dir)
                if stopping:   # -SIGTERM: stopped before it served (uvicorn's handler drains, then 0)
                    unclean += process.exitcode not in (0, -signal.SIGTERM)
                    continue
                # Died under load (killed, out of memory): the others serve while another starts.
                log(f"HTTP process {index} (pid {process.pid}) exited with status {process.exitcode}; starting another")
                if (error := start([index])) is not None and not stopping:
                    log(f"HTTP process {index} could not be restarted ({error}); serving with {len(running) - 1}")
                    del running[index]
        if unclean:
            raise GenrecError(f"{unclean} HTTP process(es) did not exit cleanly")
        if not stopping:
            raise GenrecError("every HTTP process died")
    finally:
        stop()
        for process in running.values():
            process.join(60)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        holder.close()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _mark_dead(pid: int, metrics_dir: str) -> None:
    """Drop a dead process's live gauges (its counters and histograms still count)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)
