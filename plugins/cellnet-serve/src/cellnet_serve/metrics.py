"""Prometheus metrics of one app (its own registry, so several apps in one process stay apart).

- ``cellnet_requests_total{route, method, status}``: requests answered, by status code;
- ``cellnet_request_seconds{route}``: latency histogram;
- ``cellnet_batch_texts`` / ``cellnet_batch_requests``: histograms of the texts and requests per batch;
- ``cellnet_batches_total``: forward passes run;
- ``cellnet_queue_depth``: requests waiting for a batch;
- ``cellnet_rejected_total{reason}``: requests refused because the queue was full or timed out;
- ``cellnet_conversations``: conversations held.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

try:  # no *_created series: they double the output and say nothing a scraper needs
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
except ImportError:  # pragma: no cover - prometheus-client before 0.18
    pass

_LATENCY = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's counters, gauges and histograms in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("cellnet_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.latency = Histogram("cellnet_request_seconds", "HTTP request latency", ["route"], buckets=_LATENCY,
                                 registry=r)
        self.batch_texts = Histogram("cellnet_batch_texts", "texts per forward pass", buckets=_SIZES, registry=r)
        self.batch_requests = Histogram("cellnet_batch_requests", "requests per forward pass", buckets=_SIZES,
                                        registry=r)
        self.batches = Counter("cellnet_batches", "forward passes run", registry=r)
        self.queue_depth = Gauge("cellnet_queue_depth", "requests waiting for a batch", registry=r)
        self.rejected = Counter("cellnet_rejected", "requests refused (queue full) or timed out", ["reason"],
                                registry=r)
        self.conversations = Gauge("cellnet_conversations", "conversations held", registry=r)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, texts: int, requests: int) -> None:
        """Record one forward pass of ``texts`` texts from ``requests`` requests."""
        self.batches.inc()
        self.batch_texts.observe(texts)
        self.batch_requests.observe(requests)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
