"""Model runners in worker processes: the engine's batches side by side without sharing a GIL.

On a CPU the engine runs one batch per core. As threads of one process, the batches contended
for the GIL (beam search's bookkeeping is Python between small ops), and torch.compile's guards
are not safe to evaluate from two threads at once: measured on 2 cores, two single-threaded
processes each kept their batch time (batch 8: 62 ms, 255 requests/s together) where two threads
of one process took 79 ms (202 requests/s), and threads running compiled code recompiled at
random under load ("runtime guards failed").

`ProcessRunner` has `ModelRunner`'s interface; each call to `run` takes an idle process, sends it
the batch and waits for the answer (the GIL is released while waiting). The processes load the
run themselves, ignore SIGINT/SIGTERM (the server drains first, then closes their pipes) and exit
when the pipe closes. Requests and results cross the pipe pickled, between this process and the
children it spawned only; nothing is ever unpickled from a file.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import weakref
from dataclasses import replace
from pathlib import Path

from genrec.serving.runner import ModelRunner, Request, RunnerConfig, RunnerBase


class WorkerError(RuntimeError):
    pass


def _worker_main(run_path: str, config: RunnerConfig, threads: int, conn) -> None:
    # Ctrl-C and a SIGTERM to the whole process group are the server's to handle: it drains its
    # queue through us first, then closes our pipe (or, failing that, kills us).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import torch

    from genrec.runtime import tune_allocator
    from genrec.training.run import load_run

    torch.set_num_threads(threads)
    tune_allocator()
    try:
        runner = ModelRunner(load_run(run_path), config)
    except Exception as exc:  # reported to the parent, which fails its start-up with it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            requests = conn.recv()
        except EOFError:
            return
        if requests is None:
            return
        try:
            conn.send(("ok", runner.run(requests)))
        except Exception as exc:  # a failed batch fails its requests, not the worker
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class ProcessRunner(RunnerBase):
    def __init__(self, loaded, config: RunnerConfig, processes: int, threads_per_process: int = 1):
        super().__init__(loaded, config)
        if processes < 1 or threads_per_process < 1:
            raise ValueError("processes and threads_per_process must be >= 1")
        self._context = multiprocessing.get_context("spawn")   # never fork a process holding torch threads
        self._args = (str(Path(loaded.path)), replace(config, device="cpu"), threads_per_process)
        self._workers, self._idle = [], queue.SimpleQueue()
        # Before multiprocessing's own exit hook, which would wait forever on children that
        # ignore its SIGTERM: an owner that never calls close() still exits.
        self._finalizer = weakref.finalize(self, _shut_down, self._workers)
        try:
            started = [self._start() for _ in range(processes)]
            for worker in started:                  # all load (and compile) at once
                self._wait_ready(*worker)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    def _start(self):
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_worker_main, args=(*self._args, child), name="genrec-runner",
                                        daemon=True)
        process.start()
        child.close()
        self._workers.append((process, parent))
        return process, parent

    def _wait_ready(self, process, conn) -> None:
        status, message = self._receive(process, conn)
        if status != "ready":
            raise WorkerError(f"a runner process failed to start: {message}")

    def _replace(self, dead) -> None:
        """A process died (killed, out of memory): start another in the background; the batches
        meanwhile go to the others (or wait for it)."""
        self._workers.remove(dead)
        dead[1].close()

        def start():
            worker = self._start()
            self._wait_ready(*worker)
            self._idle.put(worker)

        threading.Thread(target=start, name="genrec-runner-restart", daemon=True).start()

    @staticmethod
    def _receive(process, conn):
        while not conn.poll(0.5):
            if not process.is_alive():
                raise WorkerError(f"runner process {process.pid} exited (status {process.exitcode})")
        try:
            return conn.recv()
        except EOFError:
            raise WorkerError(f"runner process {process.pid} closed its pipe") from None

    def run(self, requests: list[Request]):
        worker = self._idle.get()
        try:
            worker[1].send(requests)
            status, payload = self._receive(*worker)
        except (WorkerError, OSError) as exc:
            self._replace(worker)
            raise WorkerError(f"the runner process answering this batch died ({exc}); restarting it") from None
        self._idle.put(worker)
        if status != "ok":
            raise WorkerError(payload)
        return payload

    def close(self) -> None:
        self._finalizer()


def _shut_down(workers: list, timeout: float = 10.0) -> None:
    for _, conn in workers:
        try:
            conn.send(None)
            conn.close()
        except OSError:
            pass
    for process, _ in workers:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
    workers.clear()
