"""The HTTP service on a real uvicorn server on 127.0.0.1: identity with `genrec recommend` and
`transformers` generate, the contract's edge cases, events surviving a restart, fuzzed bodies,
concurrency and overload."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrec.decoding.hf_baseline import hf_generate_topk
from genrec.decoding.recommend import recommend_batch
from genrec.models.tiger import to_hf
from genrec.serving.app import create_app
from genrec.serving.engine import EngineConfig
from genrec.serving.history import dataset_histories, user_index
from genrec.serving.service import fitting_batch
from genrec.training.run import load_run
from tests.conftest import run_cli
from tests.serving.conftest import on_loopback, served


def _same_top(items_a, scores_a, items_b):
    """Equal lists, except that items whose scores tie within 1e-5 may swap places."""
    for j, (a, b) in enumerate(zip(items_a, items_b)):
        if a != b and not any(abs(scores_a[j] - scores_a[i]) < 1e-5 for i in range(len(scores_a)) if i != j):
            return False
    return len(items_a) == len(items_b)


def test_identity_with_recommend_and_generate(tiger_run, tmp_path):
    loaded = load_run(tiger_run)
    histories = dataset_histories(loaded.dataset)
    users = sorted(np.random.default_rng(0).choice(list(histories), 200, replace=False).tolist())
    index = user_index(loaded.dataset)
    ids = loaded.dataset.items["item_id"].astype(str).to_numpy()
    # An identity test, not a latency one: a generous deadline, so a slow moment of a shared CI
    # machine cannot turn an answer into a refusal (one went missing once in CI, at the default 1 s).
    with served(tiger_run, tmp_path / "events.sqlite", engine=EngineConfig(deadline_ms=30_000)) as (client, _):
        with ThreadPoolExecutor(16) as pool:   # concurrent, so the engine batches them
            excluded = list(pool.map(lambda u: client.recommend(user_id=u, k=10)[1], users))
            plain = list(pool.map(lambda u: client.recommend(user_id=u, k=10, exclude_history=False)[1], users))
    assert all("items" in answer for answer in excluded + plain), [a for a in excluded + plain if "items" not in a][:3]
    rows = [index[u] for u in users]
    hist = [histories[u] for u in users]
    ours, _ = recommend_batch(loaded.model, "tiger", loaded.data, loaded.trie, rows, hist, k=10, beam=20)
    input_ids, mask = loaded.data.prompt_batch(rows, hist)
    theirs, _ = hf_generate_topk(to_hf(loaded.model), input_ids, mask, loaded.table.trie, loaded.data.vocab,
                                 beam=20, k=10)
    for i, user in enumerate(users):
        served_items = [r["item_id"] for r in excluded[i]["items"]]
        scores = [r["score"] for r in excluded[i]["items"]]
        assert _same_top(served_items, scores, list(ids[ours[i]])), user
        plain_items = [r["item_id"] for r in plain[i]["items"]]
        assert _same_top(plain_items, [r["score"] for r in plain[i]["items"]], list(ids[theirs[i].numpy()])), user
        assert excluded[i]["fallback"] is False and excluded[i]["unknown_items"] == []
    # ... and `genrec recommend` itself, as a user runs it.
    cli = json.loads(run_cli("recommend", "--run", tiger_run, "--user", users[0], "--json").stdout)
    assert [r["item_id"] for r in cli["items"]] == [r["item_id"] for r in excluded[0]["items"]]


def test_contract_edge_cases(tiger_run, tmp_path):
    with served(tiger_run, tmp_path / "events.sqlite", api_key="s3cret") as (client, _):
        key = {"X-API-Key": "s3cret"}
        status, body, _ = client.request("POST", "/v1/recommend", {"history": [], "k": 3}, headers=key)
        assert status == 200 and body["fallback"] is True and len(body["items"]) == 3
        assert [r["item_id"] for r in body["items"]] == ["50", "100", "181"]   # most rated in train
        status, body, _ = client.request("POST", "/v1/recommend", {"history": ["1", "nope", "50"], "k": 5,
                                                                    "filters": {"exclude": ["181", "zz"]}}, headers=key)
        assert status == 200 and body["unknown_items"] == ["nope", "zz"] and len(body["items"]) == 5
        assert not {"1", "50", "181"} & {r["item_id"] for r in body["items"]}
        allow = ["1", "2", "3", "4", "5", "6"]
        status, body, _ = client.request("POST", "/v1/recommend", {"history": ["7"], "k": 4,
                                                                    "filters": {"include_only": allow}}, headers=key)
        assert status == 200 and len(body["items"]) == 4 and {r["item_id"] for r in body["items"]} <= set(allow)
        for k in (0, 1001, "ten"):
            status, body, _ = client.request("POST", "/v1/recommend", {"history": ["1"], "k": k}, headers=key)
            assert status == 422 and body["detail"][0]["loc"] == ["body", "k"]
        assert client.request("POST", "/v1/recommend", {"history": ["1"]})[0] == 401          # no key
        assert client.request("POST", "/v1/recommend", {"user_id": "1", "history": ["1"]}, headers=key)[0] == 422
        assert client.request("POST", "/v1/recommend", raw=b'{"history": [', headers=key)[0] == 422
        big = client.request("POST", "/v1/recommend", raw=b'{"history": [' + b'"1",' * 40_000 + b'"1"]}', headers=key)
        assert big[0] == 413
        assert client.request("GET", "/v1/items/50", headers=key)[1]["title"] == "Star Wars"
        assert client.request("GET", "/v1/items/nope", headers=key)[0] == 404
        assert client.request("GET", "/healthz")[1]["status"] == "ok"
        metrics = client.request("GET", "/metrics")[1]
        assert 'genrec_requests_total{endpoint="/v1/recommend",status="200"} 3.0' in metrics
        assert "genrec_batch_size_bucket" in metrics and "genrec_fallbacks_total 1.0" in metrics


def test_the_fastapi_route_behind_the_front_answers_alike(tiger_run, tmp_path):
    """`Front` answers POST /v1/recommend itself; the FastAPI route behind it, which /docs
    describes, gives the same answers and the same validation errors."""
    with served(tiger_run, tmp_path / "events.sqlite") as (client, service), \
            on_loopback(create_app(service).api) as direct:
        for body in ({"user_id": "1", "k": 5}, {"history": ["1", "nope", "50"], "k": 3, "filters": {"exclude": ["zz"]}},
                     {"history": [], "k": 2}):
            (status, front, _), (direct_status, route, _) = client.recommend(**body), direct.recommend(**body)
            assert status == direct_status == 200
            assert {**front, "latency_ms": 0} == {**route, "latency_ms": 0} and front["items"]
        for body in ({"history": ["1"], "k": 0}, {"user_id": "1", "history": ["1"]}, {"history": ["1"], "extra": 1},
                     {"history": [1.5]}, {"filters": {"exclude": "50"}, "user_id": "1"}):
            (status, front, _), (direct_status, route, _) = client.recommend(**body), direct.recommend(**body)
            assert status == direct_status == 422, body
            # The same places and kinds of error (the words differ: JSON says "array", Python "list").
            assert [(e["loc"], e["type"]) for e in front["detail"]] == [(e["loc"], e["type"]) for e in route["detail"]]
        status, detail, _ = client.request("POST", "/v1/recommend", raw=b'{"history": [')
        assert status == 422 and detail["detail"][0]["loc"] == ["body"] and "JSON" in detail["detail"][0]["msg"]
        schema = client.request("GET", "/openapi.json")[1]["paths"]["/v1/recommend"]["post"]
        assert schema["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/RecommendBody")
        assert set(schema["responses"]) == {"200", "422", "429", "503"}


def test_fitting_batch_is_the_largest_size_timed_within_the_target():
    assert fitting_batch({1: 20.0, 2: 31.5, 3: 55.0, 4: 70.2}, 55.0) == 3
    assert fitting_batch({1: 20.0, 2: 31.5, 3: 55.0, 4: 70.2}, 100.0) == 4
    assert fitting_batch({1: 60.0}, 55.0) == 1   # never below one request
    assert fitting_batch({}, 55.0) == 1


def test_a_batch_time_target_sizes_max_batch_from_batches_timed_at_start_up(tiger_run, tmp_path):
    """The real runner's batches are timed; a target past any time and one below every time make
    the choice exact on any machine: the ceiling, and 1 after timing no more than a batch of 1."""
    with served(tiger_run, tmp_path / "a.sqlite", engine=EngineConfig(max_batch=6),
                batch_time_target_ms=1e6) as (client, service):
        assert list(service.warm_up_batch_ms) == [1, 2, 3, 4, 6]
        assert all(ms > 0 for ms in service.warm_up_batch_ms.values())
        assert service.config.engine.max_batch == 6 == service.engine.config.max_batch
        assert client.request("GET", "/healthz")[1]["max_batch"] == 6
    with served(tiger_run, tmp_path / "b.sqlite", engine=EngineConfig(max_batch=6),
                batch_time_target_ms=1e-3) as (client, service):
        assert list(service.warm_up_batch_ms) == [1]
        assert client.request("GET", "/healthz")[1]["max_batch"] == 1 == service.engine.config.max_batch
        assert client.request("POST", "/v1/recommend", {"user_id": "1", "k": 5})[0] == 200


def test_a_batch_running_past_the_deadline_answers_503_at_the_deadline(tiger_run, tmp_path):
    with served(tiger_run, tmp_path / "events.sqlite") as (client, service):
        runner_run = service.engine.runner.run

        def slow(requests):   # a batch slowed by other load on the cores, past any estimate
            time.sleep(0.8)
            return runner_run(requests)

        service.engine.runner.run = slow
        start = time.monotonic()
        status, body, headers = client.request("POST", "/v1/recommend", {"history": ["1"], "deadline_ms": 300})
        elapsed = time.monotonic() - start
        assert status == 503 and "deadline" in body["detail"] and headers["retry-after"] == "1"
        assert 0.3 <= elapsed < 0.7, elapsed   # at the deadline, not when the batch ended


def test_admission_weighs_each_request_against_its_own_deadline(tiger_run, tmp_path):
    """While the one worker runs a batch and recent batches took 2 s, a request on the default
    1 s deadline is refused with Retry-After, and one that asks for 30 s is admitted and answered.
    (The load shedding before the body is read once judged every request by the default deadline:
    a burst that asked for long deadlines was refused all the same.)"""
    engine = EngineConfig(max_batch=1, workers=1, deadline_ms=1000)
    with served(tiger_run, tmp_path / "events.sqlite", engine=engine) as (client, service):
        runner_run, running, release = service.engine.runner.run, threading.Event(), threading.Event()

        def held(requests):   # the first batch runs until the test lets it end
            running.set()
            release.wait(30)
            return runner_run(requests)

        service.engine.runner.run = held
        for _ in range(3):
            service.engine.record_batch(2.0)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.recommend, history=["1"], k=3, deadline_ms=30_000)
            assert running.wait(30)   # the worker is busy: a new request waits for it, then its own batch
            status, body, headers = client.recommend(history=["1"], k=3)
            assert status == 429 and "exceeds the deadline" in body["detail"] and headers["retry-after"] == "4"
            second = pool.submit(client.recommend, history=["2"], k=3, deadline_ms=30_000)
            deadline = time.monotonic() + 30
            while service.engine.queue_depth() == 0:   # admitted while the worker is busy
                assert time.monotonic() < deadline and not second.done(), second.done() and second.result()
                time.sleep(0.01)
            release.set()
            assert first.result()[0] == 200
            status, body, _ = second.result()
            assert status == 200 and len(body["items"]) == 3


def test_requests_past_the_in_flight_cap_get_429_with_retry_after(tiger_run, tmp_path):
    """Two requests whose bodies never come hold the server's two in-flight places: a third is
    refused at once with Retry-After (not uvicorn's bare 503), /healthz still answers, and once
    the two go, requests are served again."""
    with served(tiger_run, tmp_path / "events.sqlite", max_in_flight=2) as (client, service):
        stuck = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", client.port))
            sock.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n")
            stuck.append(sock)
        deadline = time.monotonic() + 10
        while "genrec_in_flight_requests 3.0" not in client.request("GET", "/metrics")[1]:   # 2 + this scrape
            assert time.monotonic() < deadline
            time.sleep(0.02)
        status, body, headers = client.request("POST", "/v1/recommend", {"history": ["1"], "k": 3})
        assert status == 429 and headers["retry-after"] == "1" and "holds 2 requests" in body["detail"]
        assert client.request("GET", "/healthz")[0] == 200
        assert 'genrec_rejected_total{reason="in_flight"} 1.0' in client.request("GET", "/metrics")[1]
        for sock in stuck:
            sock.close()
        while client.request("POST", "/v1/recommend", {"history": ["1"], "k": 3})[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_late_event_loop_refuses_recommends_until_it_catches_up(tiger_run, tmp_path):
    """The server's own event loop blocked for 0.4 s (as when it parses more requests than it can):
    a recommend that arrives meanwhile is refused with Retry-After, not admitted to be answered
    late; half a second after the loop catches up, requests are served again."""
    def served_within(seconds: float) -> bool:   # a busy test machine may delay the loop a little too
        deadline = time.monotonic() + seconds
        while client.request("POST", "/v1/recommend", {"history": ["1"], "k": 3})[0] != 200:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    with served(tiger_run, tmp_path / "events.sqlite", max_loop_lag_ms=150) as (client, service):
        assert served_within(10)   # and the watch runs
        service.loop_lag.loop.call_soon_threadsafe(time.sleep, 0.5)
        status, body, headers = client.request("POST", "/v1/recommend", {"history": ["1"], "k": 3})
        assert status == 429 and headers["retry-after"] == "1" and "event loop runs" in body["detail"]
        assert 'genrec_rejected_total{reason="event_loop_lag"}' in client.request("GET", "/metrics")[1]
        assert served_within(10)
    with served(tiger_run, tmp_path / "events.sqlite") as (client, service):   # off by default
        assert served_within(10)
        service.loop_lag.loop.call_soon_threadsafe(time.sleep, 0.5)
        assert client.request("POST", "/v1/recommend", {"history": ["1"], "k": 3})[0] == 200


def test_events_change_the_next_recommendation_and_survive_restart(tiger_run, tmp_path):
    db = tmp_path / "events.sqlite"
    with served(tiger_run, db) as (client, service):
        before = client.recommend(user_id="new-user", k=5)[1]
        assert before["fallback"] is True
        status, body, _ = client.request("POST", "/v1/events", {"user_id": "new-user", "item_ids": ["50", "x", "98"]})
        assert status == 200 and body == {"accepted": 2, "unknown_items": ["x"]}
        after = client.recommend(user_id="new-user", k=5)[1]
        assert after["fallback"] is False and not {"50", "98"} & {r["item_id"] for r in after["items"]}
    with served(tiger_run, db) as (client, service):   # a new process would read the same file
        assert service.store.history("new-user") == [service.item_index["50"], service.item_index["98"]]
        assert client.recommend(user_id="new-user", k=5)[1]["items"] == after["items"]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)
bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"user_id": json_values, "history": json_values, "k": json_values,
                                        "exclude_history": json_values, "filters": json_values,
                                        "deadline_ms": json_values, "extra": json_values}).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
)


def test_fuzzed_bodies_get_clear_4xx_never_5xx(tiger_run, tmp_path):
    with served(tiger_run, tmp_path / "events.sqlite") as (client, _):
        seen = {"n": 0}

        @settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(path=st.sampled_from(["/v1/recommend", "/v1/events"]), body=bodies)
        def check(path, body):
            status, payload, headers = client.request("POST", path, raw=body.encode())
            headers = {name.lower(): value for name, value in headers.items()}
            seen["n"] += 1
            if status == 503:   # a valid request whose own deadline_ms is too short to meet: refused in time
                assert path == "/v1/recommend" and "deadline" in payload["detail"] and headers["retry-after"]
                assert isinstance(json.loads(body)["deadline_ms"], (int, float)), (body, payload)
            else:
                assert status < 500, (body, payload)
            if status >= 400:
                assert isinstance(payload, dict) and payload["detail"], (body, payload)

        check()
        assert seen["n"] >= 2000


def test_concurrent_load_and_overload(tiger_run, tmp_path):
    loaded_users = [str(u) for u in range(1, 301)]
    with served(tiger_run, tmp_path / "a.sqlite", engine=EngineConfig(deadline_ms=60_000)) as (client, service):
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(lambda i: client.recommend(user_id=loaded_users[i % 300], k=5), range(2000)))
        assert [r[0] for r in results].count(200) == 2000
        by_user = {}
        for i, (_, body, _) in enumerate(results):   # no lost, duplicated or crossed responses
            by_user.setdefault(loaded_users[i % 300], set()).add(tuple(r["item_id"] for r in body["items"]))
        assert all(len(lists) == 1 for lists in by_user.values())
    with served(tiger_run, tmp_path / "b.sqlite", engine=EngineConfig(max_batch=4, max_queue=8)) as (client, service):
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(lambda i: client.recommend(user_id=loaded_users[i % 300], k=5), range(640)))
        statuses = [r[0] for r in results]
        assert statuses.count(429) > 0 and set(statuses) <= {200, 429, 503}
        assert all(r[2].get("retry-after") or r[2].get("Retry-After") for r in results if r[0] == 429)
        # Recovers once the load stops: within seconds, since batches slowed by the load (this
        # process also runs the 64 clients) stay in the deadline guard's view for its horizon.
        recovered_by = time.monotonic() + 2 * service.engine.BATCH_TIMES_HORIZON_S
        while (answer := client.recommend(user_id="1", k=5))[0] != 200:
            assert answer[0] in (429, 503) and answer[2].get("retry-after") and time.monotonic() < recovered_by
            time.sleep(0.2)
