"""Prometheus metrics: the shared RPC metrics, domain-metric helpers and the HTTP endpoint.

Every metric is created against an injected :class:`prometheus_client.CollectorRegistry`
(one per server), never the global default registry, so tests can build many servers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "LATENCY_BUCKETS",
    "METRIC_PREFIX",
    "MetricFactory",
    "RpcMetrics",
    "start_metrics_server",
]

METRIC_PREFIX = "agentmesh_"

# Seconds; covers sub-millisecond lookups up to multi-minute generation streams.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)


class MetricFactory:
    """Builds ``agentmesh_``-prefixed domain metrics against one registry.

    >>> tokens = MetricFactory(registry).counter("tokens", "Tokens generated.", ["model"])
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        return Counter(
            METRIC_PREFIX + name, documentation, labelnames=labelnames, registry=self.registry
        )

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        return Gauge(
            METRIC_PREFIX + name, documentation, labelnames=labelnames, registry=self.registry
        )

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(
            METRIC_PREFIX + name,
            documentation,
            labelnames=labelnames,
            buckets=buckets,
            registry=self.registry,
        )


class RpcMetrics:
    """The per-RPC metrics recorded by the shared server interceptor."""

    def __init__(self, registry: CollectorRegistry) -> None:
        factory = MetricFactory(registry)
        self.requests = factory.counter(
            "rpc_requests_total",
            "RPCs handled, by final status code.",
            ["service", "method", "code"],
        )
        self.duration = factory.histogram(
            "rpc_duration_seconds",
            "Time from the start of an RPC to its final status.",
            ["service", "method"],
        )
        self.active_streams = factory.gauge(
            "rpc_active_streams",
            "Streaming RPCs in progress.",
            ["service", "method"],
        )


def start_metrics_server(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> tuple[int, Callable[[], None]]:
    """Serve ``registry`` in the Prometheus text format on its own HTTP port (0 = any).

    Returns the bound port and a blocking ``stop()`` that is safe to call twice.
    """
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    return int(httpd.server_port), stop
