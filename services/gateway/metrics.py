"""Prometheus metrics of the gateway.

Request counts and latencies come from an ASGI middleware in this process. Jobs by state,
queue depth and stage durations are shared by every gateway and worker, so they are read
from Redis at scrape time (workers add stage durations there; see JobStore.observe_stage).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("kinemesh_http_requests", "HTTP requests handled", ["method", "route", "status"],
                   registry=REGISTRY)
LATENCY = Histogram("kinemesh_http_request_seconds", "HTTP request latency", ["method", "route"],
                    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30))


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead); labels by route template, not raw path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # label lookups take a lock and hash the labels: resolve each combination once
        self._children: dict[tuple[str, str, int], tuple[object, object]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"  # bounded labels
            key = (method, template, status["code"])
            children = self._children.get(key)
            if children is None:
                children = (REQUESTS.labels(key[0], template, str(key[2])), LATENCY.labels(key[0], template))
                self._children[key] = children
            children[0].inc()
            children[1].observe(time.perf_counter() - start)


class _Snapshot:
    """Collector over values fetched from Redis just before the scrape."""

    def __init__(self, states: dict[str, int], queue_depth: int, stages: dict[str, dict[str, float]]) -> None:
        self.states, self.queue_depth, self.stages = states, queue_depth, stages

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("kinemesh_jobs", "Jobs by state (active states: now; terminal: since start)",
                                 labels=["state"])
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            jobs.add_metric([state], max(0, self.states.get(state, 0)))
        yield jobs
        yield GaugeMetricFamily("kinemesh_queue_depth", "Jobs waiting in the broker queue", value=self.queue_depth)
        hist = HistogramMetricFamily("kinemesh_stage_seconds", "Pipeline stage durations", labels=["stage"])
        for stage, h in sorted(self.stages.items()):
            bounds = sorted((float(k[3:]), v) for k, v in h.items() if k.startswith("le:"))
            buckets = [(str(b), v) for b, v in bounds] + [("+Inf", h.get("count", 0.0))]
            hist.add_metric([stage], buckets, sum_value=h.get("sum", 0.0))
        yield hist


def render(states: dict[str, int], queue_depth: int, stages: dict[str, dict[str, float]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(states, queue_depth, stages))
    return generate_latest(REGISTRY) + generate_latest(registry)
