"""The strategies, one module each behind `Strategy`, and the registry keyed by the enum.

Adding a strategy is a module with a `Strategy` subclass plus one line in `_build_registry`.
`strategy_for` answers the engine (which strategy runs a session) and `validate_session` the
API (whether a new session's setup fits its strategy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agentmesh.common.v1 import sessions_pb2
from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.agents import SessionAgent

from .base import Strategy
from .handoff import Handoff
from .pipeline import Pipeline, render_stage_input
from .planner_executor import PlannerExecutor
from .round_robin import RoundRobin
from .router import Router
from .selector import Selector

__all__ = [
    "Strategy",
    "registered",
    "render_stage_input",
    "strategy_for",
    "validate_session",
]


def _build_registry() -> dict[sessions_pb2.Strategy.ValueType, Strategy]:
    planning = PlannerExecutor()
    strategies: list[Strategy] = [
        RoundRobin(),
        Pipeline(),
        planning,
        Router(planning),
        Selector(),
        Handoff(),
    ]
    return {strategy.kind: strategy for strategy in strategies}


_REGISTRY = _build_registry()
DEFAULT = sessions_pb2.STRATEGY_ROUND_ROBIN  # what an unset strategy runs as


def registered() -> Mapping[sessions_pb2.Strategy.ValueType, Strategy]:
    """Every strategy by its enum value."""
    return _REGISTRY


def strategy_for(kind: sessions_pb2.Strategy.ValueType) -> Strategy:
    """The strategy that runs sessions of `kind` (UNSPECIFIED runs as round-robin)."""
    strategy = _REGISTRY.get(kind or DEFAULT)
    if strategy is None:
        raise InvalidArgument.for_field("session.strategy", f"unknown strategy {kind}")
    return strategy


def validate_session(session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
    """Check a new session's setup: its strategy's own checks, then the termination's."""
    strategy_for(session.strategy).validate(session, agents)
    known = {a.name for a in agents} | {a.label for a in agents}
    judge = session.termination.judge_agent
    if judge and judge not in known:
        raise InvalidArgument.for_field(
            "session.termination.judge_agent", f"{judge} is not a member"
        )
