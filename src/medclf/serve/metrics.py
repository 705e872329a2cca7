"""Prometheus metrics of the service (``GET /metrics``, text exposition format), with
``prometheus_client``: request counts by endpoint, method and status, request latency
histograms by endpoint, model load seconds per run, sizes of the predicted batches."""
from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The service's metrics in their own registry (one per app, so several apps in one
    process, as in tests, do not collide)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("medclf_http_requests", "HTTP requests by endpoint (route template), method "
                                "and status code.", ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("medclf_http_request_duration_seconds", "Time from request to the end of the "
                                 "response, seconds, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.model_load = Gauge("medclf_model_load_seconds", "Seconds the last load (and warm-up) of a run's "
                                "model took, by run and backend.", ["run", "backend"], registry=self.registry)
        self.batch_size = Histogram("medclf_prediction_batch_size", "Images per forward pass of the prediction "
                                    "backend (micro-batching joins concurrent requests).", buckets=BATCH_BUCKETS,
                                    registry=self.registry)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and times it, labelled with the
    route's path template (``/api/runs/{run}/predict``, not the URL, so run names and
    attack paths do not create new series); ``unmatched`` when no route matched."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def recording(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
