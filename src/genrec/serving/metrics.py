"""Prometheus metrics of the service (`GET /metrics`), in a registry of its own per app.

With `genrec serve --http-processes N` each process records into files of its own under
$PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, chosen by that variable when the
library is imported: the server sets it before it starts them), and a scrape, whichever process
answers it, adds up all of them: counters and histograms over every process that ran, gauges over
the live ones (queue depth, requests in flight: summed; event-loop lag: the largest). Gauges are
therefore set, never computed at scrape time (a function would be read in the scraped process only).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("genrec_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("genrec_request_latency_seconds", "Recommend latency, queueing included",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("genrec_batch_size", "Requests per engine step", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_seconds = Histogram("genrec_batch_seconds", "Model time per engine step",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue = Gauge("genrec_queue_depth", "Requests waiting for the engine", registry=r,
                           multiprocess_mode="livesum")
        self.loop_lag = Gauge("genrec_event_loop_lag_seconds", "How late the HTTP event loop runs (largest "
                              "of the last 0.5 s)", registry=r, multiprocess_mode="livemax")
        self.in_flight = Gauge("genrec_in_flight_requests", "HTTP requests in the server: being read, queued "
                               "or answered (this scrape included)", registry=r, multiprocess_mode="livesum")
        self.fallbacks = Counter("genrec_fallbacks", "Recommendations answered by popularity", registry=r)
        self.rejected = Counter("genrec_rejected", "Requests refused by admission control or deadline",
                                ["reason"], registry=r)

    def attach_prefix_cache(self, cache) -> None:
        """Export the runner's prefix-cache counters, read at scrape time (one process only: the
        cache is the process's own, and `--http-processes` refuses it)."""
        Gauge("genrec_prefix_cache_lookups", "Prompt prefills that looked up the prefix cache",
              registry=self.registry).set_function(lambda: cache.lookups)
        Gauge("genrec_prefix_cache_hits", "Lookups that reused at least one cached block",
              registry=self.registry).set_function(lambda: cache.hits)
        Gauge("genrec_prefix_cache_hit_rate", "hits / lookups", registry=self.registry).set_function(
            lambda: cache.hits / cache.lookups if cache.lookups else 0.0)
        Gauge("genrec_prefix_cache_blocks", "Blocks held", registry=self.registry).set_function(lambda: len(cache))

    # The engine's observer interface.
    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def queue_depth(self, n: int) -> None:
        self.queue.set(n)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):   # every process's files, this one's included
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)
