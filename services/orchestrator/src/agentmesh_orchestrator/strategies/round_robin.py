"""ROUND_ROBIN: each round every agent (but a judge) speaks once from the shared conversation.

Stops at max rounds, a stop phrase, a judge saying GOAL REACHED, the token budget or the
session deadline (which completes the session with the last answer). `single_step=True` runs
one round (the `Step` RPC). A user message sent with INTERRUPT stops the turn in progress and
is heard by the next speaker.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.rpc import code_pb2

from agentmesh.common.v1 import sessions_pb2
from agentmesh_orchestrator.agents import SessionAgent
from agentmesh_orchestrator.runtime import Ending, Runtime, SessionFailure
from agentmesh_orchestrator.termination import Phase, Termination, conversation_termination

from .base import Strategy, judge_of, require_agents


class RoundRobin(Strategy):
    """Every agent speaks once per round, in order."""

    kind = sessions_pb2.STRATEGY_ROUND_ROBIN

    def validate(self, session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
        require_agents(agents)

    def termination(self, rt: Runtime) -> Termination:
        return conversation_termination(rt.session, rt.limits, judge_of(rt))

    async def run(self, rt: Runtime, *, single_step: bool) -> Ending | None:
        session = rt.session
        judge = judge_of(rt)
        speakers = [a for a in rt.agents if a is not judge]
        if not speakers:
            raise SessionFailure(code_pb2.FAILED_PRECONDITION, "the session has no agents to speak")
        while True:
            await rt.check(Phase.BEFORE_ROUND)
            round_number = session.rounds_completed + 1
            rt.round = round_number
            for agent in speakers:
                await rt.deliver_user_messages()
                outcome = await rt.interruptible(rt.conversation_turn(agent, round_number))
                if outcome is None:  # interrupted by a user message: it is heard next
                    await rt.deliver_user_messages()
            session.rounds_completed = round_number
            rt.save(["rounds_completed"])
            await rt.check(Phase.AFTER_ROUND)
            if single_step:
                return None

    async def on_deadline(self, rt: Runtime) -> Ending | None:
        # The session's own deadline is one of round-robin's termination conditions.
        return Ending(await rt.last_answer(), "deadline")
