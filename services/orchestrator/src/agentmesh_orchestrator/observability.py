"""The orchestrator's domain metrics (RPC metrics come from the shared interceptors)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agentmesh_common import MetricFactory


@dataclass(frozen=True)
class OrchestratorMetrics:
    """Counters and gauges a dashboard needs to watch sessions."""

    active_sessions: Gauge
    sessions_ended: Counter
    turns: Counter
    turn_seconds: Histogram
    tool_calls: Counter
    cancellations: Counter
    lease_takeovers: Counter
    admission_refused: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> OrchestratorMetrics:
        factory = MetricFactory(registry)
        return cls(
            active_sessions=factory.gauge(
                "orchestrator_active_sessions", "Sessions running on this replica."
            ),
            sessions_ended=factory.counter(
                "orchestrator_sessions_ended_total", "Sessions ended, by outcome.", ["outcome"]
            ),
            turns=factory.counter(
                "orchestrator_turns_total", "Agent turns, by outcome.", ["outcome"]
            ),
            turn_seconds=factory.histogram(
                "orchestrator_turn_seconds", "Wall time of an agent turn, tools included."
            ),
            tool_calls=factory.counter(
                "orchestrator_tool_calls_total",
                "Tool calls, by tool and outcome.",
                ["tool", "outcome"],
            ),
            cancellations=factory.counter(
                "orchestrator_cancellations_total", "Sessions cancelled, by reason.", ["reason"]
            ),
            lease_takeovers=factory.counter(
                "orchestrator_lease_takeovers_total", "Sessions resumed after their owner died."
            ),
            admission_refused=factory.counter(
                "orchestrator_admission_refused_total",
                "Calls refused with REPLICA_AT_CAPACITY, by the bound that was full.",
                ["limit"],
            ),
        )
