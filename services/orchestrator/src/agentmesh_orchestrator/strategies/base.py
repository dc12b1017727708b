"""The one interface every strategy implements.

A strategy is how a team works on a goal. It checks its own setup when a session is created
(`validate`, raising `InvalidArgument` naming the field at fault), runs the session on a
`Runtime` (`run`, returning how it ended, or None when a `Step` left the session running),
and decides what the session's deadline means for it (`on_deadline`). The engine does the
rest: starting the session, the deadline itself, and the one terminal event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from agentmesh.common.v1 import sessions_pb2
from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.agents import SessionAgent
from agentmesh_orchestrator.runtime import Ending, Runtime
from agentmesh_orchestrator.termination import Termination, limits_termination


class Strategy(ABC):
    """How the agents of a session cooperate (one per `agentmesh.common.v1.Strategy`)."""

    kind: ClassVar[sessions_pb2.Strategy.ValueType]

    def validate(self, session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
        """Check the session's setup for this strategy when it is created; raise
        `InvalidArgument` naming the field at fault. Nothing to check by default."""
        return None

    def termination(self, rt: Runtime) -> Termination:
        """What ends the session besides the strategy finishing, checked by the runtime after
        every turn; by default the token budget and the deadline."""
        return limits_termination(rt.limits)

    @abstractmethod
    async def run(self, rt: Runtime, *, single_step: bool) -> Ending | None:
        """Run the session; return how it ended, or None when `single_step` (the `Step` RPC)
        left it running."""

    async def on_deadline(self, rt: Runtime) -> Ending | None:
        """The session's deadline passed during `run`: an `Ending` completes the session,
        None cancels it (reason "deadline"), which is the default."""
        return None


def require_agents(agents: Sequence[SessionAgent]) -> None:
    """A strategy that has no built-in agents to fall back on needs members."""
    if not agents:
        raise InvalidArgument.for_field("session.agents", "this strategy needs at least one agent")


def judge_of(rt: Runtime) -> SessionAgent | None:
    """The member named as the judge (it listens, and only answers the judge's question)."""
    name = rt.session.termination.judge_agent
    return next((a for a in rt.agents if name and name in (a.name, a.label)), None)
