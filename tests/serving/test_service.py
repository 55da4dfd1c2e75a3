"""How a request waits for the engine (`service._engine_answer`): the answer or the engine's error
from its thread, and at the deadline DeadlineExceeded with the request cancelled, so that the
engine skips it if its batch has not started. On asyncio's loop and on uvloop (what uvicorn runs)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest
import uvloop

from genrec.serving.engine import DeadlineExceeded, Overloaded
from genrec.serving.service import _engine_answer

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


def _later(seconds: float, action) -> None:
    threading.Timer(seconds, action).start()   # the engine's thread


@pytest.mark.parametrize("loop", LOOPS)
def test_the_answer_arrives_from_the_engine_thread(loop):
    future = Future()
    future.set_running_or_notify_cancel()
    _later(0.05, lambda: future.set_result(([3, 1], [-0.5, -0.7])))
    assert LOOPS[loop](_engine_answer(future, 5.0)) == ([3, 1], [-0.5, -0.7])


@pytest.mark.parametrize("loop", LOOPS)
def test_the_engines_error_is_raised(loop):
    future = Future()
    _later(0.05, lambda: future.set_exception(Overloaded("queue full", 1)))
    with pytest.raises(Overloaded, match="queue full"):
        LOOPS[loop](_engine_answer(future, 5.0))


@pytest.mark.parametrize("loop", LOOPS)
def test_a_queued_request_past_its_deadline_is_cancelled(loop):
    future = Future()   # still queued: its batch has not started
    with pytest.raises(DeadlineExceeded, match="before the batch ended"):
        LOOPS[loop](_engine_answer(future, 0.05))
    assert future.cancelled() and not future.set_running_or_notify_cancel()   # the engine skips it


@pytest.mark.parametrize("loop", LOOPS)
def test_a_running_request_past_its_deadline_fails_and_its_late_result_is_dropped(loop, caplog):
    future = Future()
    future.set_running_or_notify_cancel()   # in a batch already: cannot be cancelled
    finished = threading.Event()

    def late_result():
        future.set_result(([1], [-0.1]))   # after the loop has closed: delivery must not raise
        finished.set()

    with pytest.raises(DeadlineExceeded):
        LOOPS[loop](_engine_answer(future, 0.05))
    _later(0.0, late_result)
    assert finished.wait(5) and future.result() == ([1], [-0.1])
    # concurrent.futures logs a callback that raised (here: onto a closed loop) instead of raising
    assert not [r for r in caplog.records if "exception calling callback" in r.getMessage()]
