"""SIGTERM while requests are in flight: every one of them is answered, then `genrec serve`
exits 0."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_in_flight_requests(tiger_run, tmp_path):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "genrec", "serve", "--run", str(tiger_run), "--port", str(port),
                               "--db", str(tmp_path / "events.sqlite"), "--max-batch", "2", "--threads", "1",
                               "--deadline-ms", "60000"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("server did not start")
        statuses: list[int] = []

        def one(user: int):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/v1/recommend", body=json.dumps({"user_id": str(user), "k": 10}),
                      headers={"content-type": "application/json"})
            response = c.getresponse()
            response.read()
            statuses.append(response.status)

        threads = [threading.Thread(target=one, args=(u,)) for u in range(1, 41)]
        for t in threads:
            t.start()
        time.sleep(0.3)                      # all sent; batches of 2 keep most of them queued
        server.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        assert server.wait(120) == 0, server.stdout.read()
        assert statuses == [200] * 40
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)
