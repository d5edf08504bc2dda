"""ServeMetrics: Prometheus counters and histograms of one server (its own registry, so that
several apps in one process, as in the tests, do not collide), with the process collector (CPU,
resident memory, open files, start time) and the platform collector (Python version) registered on
that registry too, as a default Prometheus client would expose them."""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter("medhash_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("medhash_http_request_seconds", "HTTP request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.searches = Counter("medhash_searches", "Searches by query kind", ["query"], registry=r)
        self.stage = Histogram("medhash_search_stage_seconds", "Time per search stage", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("medhash_encode_batch_size", "Requests per encoder forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.encode_seconds = Histogram("medhash_encode_batch_seconds", "Encoder forward pass time",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.bad_images = Counter("medhash_bad_images", "Uploads that could not be decoded, by reason", ["kind"],
                                  registry=r)
        self.index_size = Gauge("medhash_index_codes", "Codes in the served index", registry=r)
        self.encoder_queue = Gauge("medhash_encoder_queue", "Images waiting for the encoder", registry=r)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.encode_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
