"""A tiny TIGER and a tiny causal model trained on real MovieLens-100K semantic IDs, and a real
uvicorn server on 127.0.0.1 in a background thread."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiger_run(ml100k_ids, tmp_path_factory) -> Path:
    from genrec.training.loop import train
    from tests.training.test_train import tiny_config

    run = tmp_path_factory.mktemp("serving") / "tiger"
    train(ml100k_ids, run, tiny_config("tiger", max_steps=8, max_history=20, user_buckets=100, eval_users=20),
          log=lambda _: None)
    return run


@pytest.fixture(scope="session")
def causal_ml100k_run(ml100k_ids, tmp_path_factory) -> Path:
    from genrec.training.loop import train
    from tests.training.test_train import TINY, tiny_config

    run = tmp_path_factory.mktemp("serving") / "causal"
    args = {**TINY["causal"], "num_heads": 4, "num_kv_heads": 2}   # grouped heads, as the bundled config
    train(ml100k_ids, run, tiny_config("causal", model_args=args, max_steps=8, max_history=20, user_buckets=100,
                                       eval_users=20), log=lambda _: None)
    return run


@contextlib.contextmanager
def served(run: Path, db: Path, **service_options):
    """Yield a `Client` of `genrec serve`'s app on a free loopback port, and its service; drain on exit."""
    from genrec.serving.app import create_app
    from genrec.serving.engine import EngineConfig
    from genrec.serving.runner import RunnerConfig
    from genrec.serving.service import RecommendService, ServiceConfig
    from genrec.training.run import load_run

    engine = service_options.pop("engine", EngineConfig())
    service = RecommendService(load_run(run), ServiceConfig(RunnerConfig(), engine, db_path=db, **service_options))
    try:
        with on_loopback(create_app(service)) as client:
            yield client, service
    finally:
        service.close()


@contextlib.contextmanager
def on_loopback(app):
    """Yield a `Client` of the ASGI `app` on a real uvicorn server on a free loopback port."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield Client(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class Client:
    """Keep-alive JSON client; one connection per thread."""

    def __init__(self, port: int):
        self.port = port
        self._local = threading.local()

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
            response = conn.getresponse()
            payload = response.read()
        except (ConnectionError, http.client.HTTPException):
            self._local.conn = None
            raise
        if response.getheader("connection", "").lower() == "close":
            conn.close()
            self._local.conn = None
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return response.status, parsed, dict(response.getheaders())

    def recommend(self, **body):
        return self.request("POST", "/v1/recommend", body)
