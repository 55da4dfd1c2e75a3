"""The engine: batched results equal one `recommend_batch` per request; admission control,
deadlines and draining."""

from __future__ import annotations

import time

import numpy as np
import pytest

from genrec.decoding.recommend import recommend_batch
from genrec.serving.engine import DeadlineExceeded, Engine, EngineConfig, EngineStopped, Overloaded
from genrec.serving.history import dataset_histories
from genrec.serving.runner import ModelRunner, Request, RunnerConfig
from genrec.serving.workers import ProcessRunner, WorkerError
from genrec.training.run import load_run


@pytest.fixture(scope="module")
def loaded(tiger_run):
    return load_run(tiger_run)


@pytest.mark.parametrize("workers,processes", [(1, False), (2, False), (2, True)])
def test_batched_requests_equal_single_requests(loaded, workers, processes):
    histories = list(dataset_histories(loaded.dataset).values())
    rng = np.random.default_rng(0)
    include = tuple(sorted(rng.choice(loaded.dataset.num_items, 30, replace=False).tolist()))
    requests = [Request(u, histories[u], k=int(rng.integers(1, 21)), exclude=histories[u][: u % 7 * 10],
                        include_only=include if u % 5 == 0 else None) for u in range(40)]
    # With two workers, two of those batches run at the same time: on the same model (threads) or
    # in two worker processes, each loading the run itself.
    runner = ProcessRunner(loaded, RunnerConfig(), processes=workers) if processes else ModelRunner(loaded)
    engine = Engine(runner, EngineConfig(max_batch=16, workers=workers))
    futures = [engine.submit(r) for r in requests]  # queued before the start: batches of up to 16
    engine.start()
    for r, future in zip(requests, futures):
        items, scores = future.result(timeout=60)
        allow = None if r.include_only is None else [list(r.include_only)]
        alone, alone_scores = recommend_batch(loaded.model, "tiger", loaded.data, loaded.trie, [r.user_idx],
                                              [r.history], k=r.k, beam=20, exclude_history=False, exclude=[r.exclude],
                                              include_only=allow)
        expected = alone[0][alone[0] >= 0]
        assert len(items) == r.k == len(expected)      # exclusions never leave a list short
        np.testing.assert_allclose(scores, alone_scores[0][: r.k], atol=1e-5)
        assert list(items) == list(expected) or np.allclose(np.diff(scores), 0, atol=1e-5)
        assert not set(items) & set(r.exclude)
        if r.include_only is not None:
            assert set(items) <= set(include)
    engine.stop()
    runner.close()


def test_full_queue_and_predicted_wait_refuse_at_once(loaded):
    engine = Engine(ModelRunner(loaded), EngineConfig(max_batch=4, max_queue=3))
    for _ in range(3):
        engine.submit(Request(0, [1, 2, 3]))
    with pytest.raises(Overloaded) as refused:
        engine.submit(Request(0, [1, 2, 3]))
    assert refused.value.retry_after_s >= 1
    engine.start()
    engine.stop(drain=True)
    slow = Engine(ModelRunner(loaded), EngineConfig(max_batch=1, max_queue=100))
    slow.record_batch(0.05)   # as measured under load
    for _ in range(10):
        slow.submit(Request(0, [1, 2, 3]), deadline_ms=1000)
    with pytest.raises(Overloaded, match="predicted wait"):
        slow.submit(Request(0, [1, 2, 3]), deadline_ms=100)   # 11 batches of 50 ms ahead > 100 ms
    slow.stop(drain=False)


def test_expired_requests_fail_and_stop_drains(loaded):
    engine = Engine(ModelRunner(loaded), EngineConfig(max_batch=8))
    late = engine.submit(Request(0, [1, 2, 3]), deadline_ms=1)
    on_time = [engine.submit(Request(u, [u + 1, u + 2]), deadline_ms=60_000) for u in range(5)]
    time.sleep(0.01)
    engine.start()
    with pytest.raises(DeadlineExceeded):
        late.result(timeout=60)
    engine.stop(drain=True)          # the queued requests finish before the worker exits
    assert all(len(f.result(timeout=0)[0]) == 10 for f in on_time)
    with pytest.raises(EngineStopped):
        engine.submit(Request(0, [1]))


def test_deadlines_count_from_arrival_and_cover_the_batch(loaded):
    engine = Engine(ModelRunner(loaded), EngineConfig(max_batch=8))
    with pytest.raises(Overloaded):   # it reached the server 2 s ago: a 1 s deadline is already gone
        engine.submit(Request(0, [1, 2, 3]), deadline_ms=1000, arrived=time.monotonic() - 2.0)
    engine.record_batch(10.0)   # batches take 10 s: a 5 s deadline cannot be met
    doomed = engine.submit(Request(0, [1, 2, 3]), deadline_ms=5000)   # idle: admitted, nothing ahead
    fine = engine.submit(Request(1, [4, 5]), deadline_ms=60_000)
    engine.start()
    with pytest.raises(DeadlineExceeded, match="before a batch would end"):
        doomed.result(timeout=60)
    assert len(fine.result(timeout=60)[0]) == 10
    engine.stop()


def test_a_batch_must_end_with_headroom_and_a_margin_before_the_deadline(loaded):
    """A batch as slow as the slowest recent one x 1.25 must end 10 % of the deadline before it:
    0.8 s x 1.25 = 1.0 s > 0.9 s of a 1 s deadline, though 0.8 s alone would fit."""
    engine = Engine(ModelRunner(loaded), EngineConfig(max_batch=8))
    engine.record_batch(0.8)
    doomed = engine.submit(Request(0, [1, 2, 3]), deadline_ms=1000)
    fine = engine.submit(Request(1, [4, 5]), deadline_ms=1500)   # 1.0 s <= 0.9 x 1.5 s
    engine.start()
    with pytest.raises(DeadlineExceeded):
        doomed.result(timeout=60)
    assert len(fine.result(timeout=60)[0]) == 10
    engine.stop()
    with pytest.raises(ValueError):
        EngineConfig(answer_margin=1.0)


def test_token_budget_caps_each_step(loaded):
    class Sizes:
        def __init__(self):
            self.sizes = []

        def batch(self, size, seconds):
            self.sizes.append(size)

        def queue_depth(self, n):
            pass

    runner, observer = ModelRunner(loaded), Sizes()
    long_history = list(range(1, 40))                 # capped at max_history items
    tokens = runner.prompt_tokens(Request(0, long_history))
    assert tokens == 1 + loaded.config.max_history * loaded.table.depth
    assert runner.prompt_tokens(Request(0, [5, 6])) == 1 + 2 * loaded.table.depth
    engine = Engine(runner, EngineConfig(max_batch=16, max_batch_tokens=2 * tokens), observer=observer)
    futures = [engine.submit(Request(u, long_history)) for u in range(5)]
    futures.append(engine.submit(Request(5, [5, 6])))   # short: fits beside one long prompt
    engine.start()
    assert all(len(f.result(timeout=60)[0]) == 10 for f in futures)
    engine.stop()
    assert observer.sizes == [2, 2, 2]   # 2 long ones per step; the short one joins the last long one


def test_a_stale_slow_batch_stops_counting(loaded):
    """One very slow batch (a compilation) would refuse every request, and refused requests run
    no batch to replace it: batch times older than the horizon no longer count."""
    engine = Engine(ModelRunner(loaded), EngineConfig(max_batch=4, deadline_ms=1000)).start()
    engine.record_batch(40.0)
    with pytest.raises(DeadlineExceeded):          # admitted (idle) but doomed while it is fresh
        engine.submit(Request(0, [1, 2, 3])).result(timeout=60)
    engine._recent_batches[-1] = (time.monotonic() - Engine.BATCH_TIMES_HORIZON_S - 1, 40.0)   # it ages
    assert len(engine.submit(Request(0, [1, 2, 3])).result(timeout=60)[0]) == 10
    engine.stop()


def test_a_worker_process_that_fails_fails_its_batch_only(loaded):
    runner = ProcessRunner(loaded, RunnerConfig(), processes=1)
    history = list(dataset_histories(loaded.dataset).values())[1]
    with pytest.raises(WorkerError, match="IndexError"):
        runner.run([Request(0, [loaded.dataset.num_items + 5])])   # an item index the model does not have
    items, _ = runner.run([Request(1, history, k=5)])[0]             # the same process answers the next batch
    assert len(items) == 5
    runner._workers[0][0].kill()                                        # a process dies: its batch fails,
    with pytest.raises(WorkerError, match="died"):                     # a new process takes its place
        runner.run([Request(1, history, k=5)])
    again, _ = runner.run([Request(1, history, k=5)])[0]
    assert list(again) == list(items)
    runner.close()
