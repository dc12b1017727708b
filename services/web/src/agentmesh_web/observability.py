"""The web edge's metrics (its gRPC health server gets the shared RPC metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentmesh_common import MetricFactory


@dataclass(frozen=True)
class WebMetrics:
    """HTTP requests, open streams and what they relay."""

    requests: Counter
    request_seconds: Histogram
    open_streams: Gauge
    relayed_events: Counter
    slow_consumers: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> WebMetrics:
        factory = MetricFactory(registry)
        return cls(
            requests=factory.counter(
                "web_http_requests_total",
                "HTTP requests, by RPC (or edge route), method and status.",
                ["route", "method", "status"],
            ),
            request_seconds=factory.histogram(
                "web_http_request_seconds", "Time to the response headers, by RPC.", ["route"]
            ),
            open_streams=factory.gauge(
                "web_open_streams", "Event streams open, by framing.", ["framing"]
            ),
            relayed_events=factory.counter(
                "web_relayed_events_total",
                "Session events written to clients, by framing.",
                ["framing"],
            ),
            slow_consumers=factory.counter(
                "web_slow_consumers_total",
                "Streams closed because their client fell too far behind, by framing.",
                ["framing"],
            ),
        )
