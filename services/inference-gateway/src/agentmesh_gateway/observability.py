"""Domain metrics of the gateway (no prompts, no keys: only names, counts and outcomes)."""

from __future__ import annotations

from agentmesh_common import MetricFactory

TTFT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, factory: MetricFactory) -> None:
        self.time_to_first_token = factory.histogram(
            "gateway_time_to_first_token_seconds",
            "From the start of an attempt to its first streamed delta.",
            ["provider", "model"],
            buckets=TTFT_BUCKETS,
        )
        self.tokens = factory.counter(
            "gateway_tokens_total",
            "Tokens billed, by direction (prompt/completion) and whether estimated.",
            ["provider", "model", "direction", "estimated"],
        )
        self.attempts = factory.counter(
            "gateway_attempts_total", "Upstream attempts by outcome.", ["provider", "outcome"]
        )
        self.errors = factory.counter(
            "gateway_errors_total",
            "Failed attempts by provider and reason.",
            ["provider", "reason"],
        )
        self.fallbacks = factory.counter(
            "gateway_fallbacks_total", "Moves to the next deployment of a route.", ["route"]
        )
        self.restarts = factory.counter(
            "gateway_restarts_total", "Restarts after output was already streamed.", ["route"]
        )
        self.circuit_state = factory.gauge(
            "gateway_circuit_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            ["deployment"],
        )
        self.cost = factory.counter(
            "gateway_cost_micros_usd_total", "Cost in micro-USD.", ["provider", "model"]
        )
        self.cache_requests = factory.counter(
            "gateway_cache_requests_total",
            "Response cache look-ups by route and result (hit, miss).",
            ["route", "result"],
        )
        self.cache_bytes_read = factory.counter(
            "gateway_cache_read_bytes_total", "Bytes of cached answers replayed.", ["route"]
        )
        self.cache_bytes_written = factory.counter(
            "gateway_cache_written_bytes_total", "Bytes of answers stored in the cache.", ["route"]
        )
        self.cache_size_bytes = factory.gauge(
            "gateway_cache_size_bytes", "Bytes held by the in-process response cache.", []
        )
