"""The server's Prometheus series (prometheus_client), with bounded label values only.

Every label takes values from a fixed set: routes the app defines, a handful of HTTP methods,
status codes the server itself produces, and expert indices < K. A client cannot grow the
series count by sending odd paths or methods: those collapse to "other".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS"})
# Latency of everything from a health probe (sub-millisecond) to a large batch (minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServeMetrics:
    """One registry per app, so that several apps (tests) never share counters."""

    def __init__(self, routes: Iterable[str]) -> None:
        self.routes = frozenset(routes)
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "paris_http_requests", "HTTP requests by route, method and status code.", ["route", "method", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "paris_http_request_duration_seconds", "Time to answer a request, by route.", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.in_flight = Gauge("paris_http_requests_in_flight", "Requests being answered now.", registry=r)
        self.queue_depth = Gauge("paris_queue_depth", "Generation requests waiting for the pipeline.", registry=r)
        self.generating = Gauge("paris_generation_in_flight", "Requests inside a running pipeline call.", registry=r)
        self.batch_images = Histogram(
            "paris_batch_size_images", "Images per pipeline call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "paris_batch_size_requests", "Requests sharing one pipeline call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.generate_seconds = Histogram(
            "paris_generate_seconds", "Time of one pipeline call (a whole batch).", buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter("paris_images_generated", "Images generated.", registry=r)
        self.rejected = Counter(
            "paris_requests_rejected", "Requests refused before generation, by reason.", ["reason"], registry=r
        )
        self.errors = Counter("paris_generation_errors", "Pipeline calls that raised.", registry=r)
        self.expert_weight = Counter(
            "paris_expert_routing_weight",
            "Routing weight each expert received, in images (each image's weights average to 1 over its steps).",
            ["expert"], registry=r,
        )
        self.expert_calls = Counter(
            "paris_expert_calls", "Samples x steps each expert ran on.", ["expert"], registry=r
        )
        self.ready = Gauge("paris_model_ready", "1 once the pipeline is loaded.", registry=r)
        for reason in ("queue_full", "body_too_large", "timeout", "client_gone", "unauthorized"):
            self.rejected.labels(reason)  # exported at 0 from the start, so rate() works at once

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"

    @staticmethod
    def method(method: str) -> str:
        return method if method in METHODS else "other"

    def observe_request(self, path: str, method: str, code: int, seconds: float) -> None:
        route, m = self.route(path), self.method(method)
        self.requests.labels(route, m, str(code)).inc()
        self.latency.labels(route, m).observe(seconds)

    def observe_batch(
        self, requests: int, images: int, seconds: float, usage: Sequence[float], calls: Sequence[int]
    ) -> None:
        self.batch_requests.observe(requests)
        self.batch_images.observe(images)
        self.generate_seconds.observe(seconds)
        self.images.inc(images)
        for k, w in enumerate(usage):
            self.expert_weight.labels(str(k)).inc(w)
        for k, c in enumerate(calls):
            self.expert_calls.labels(str(k)).inc(c)

    def render(self) -> bytes:
        return generate_latest(self.registry)
