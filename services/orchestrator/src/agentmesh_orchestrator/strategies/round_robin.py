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
from agentmesh_orchestrator.turns import Turn

from .base import Strategy, require_agents

JUDGE_PROMPT = (
    "Goal: {goal}\n\nAfter round {round}, has the conversation reached the goal? Start your "
    "answer with GOAL REACHED or GOAL NOT REACHED, then say why in one sentence."
)


class RoundRobin(Strategy):
    """Every agent speaks once per round, in order."""

    kind = sessions_pb2.STRATEGY_ROUND_ROBIN

    def validate(self, session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
        require_agents(agents)

    async def run(self, rt: Runtime, *, single_step: bool) -> Ending | None:
        session = rt.session
        judge_name = session.termination.judge_agent
        speakers = [a for a in rt.agents if a.name != judge_name and a.label != judge_name]
        judge = next((a for a in rt.agents if judge_name in (a.name, a.label)), None)
        if not speakers:
            raise SessionFailure(code_pb2.FAILED_PRECONDITION, "the session has no agents to speak")
        stop_phrase = session.termination.stop_phrase.lower()
        while True:
            if session.rounds_completed >= rt.limits.max_rounds:
                return Ending(await rt.last_answer(), "max_rounds")
            round_number = session.rounds_completed + 1
            for agent in speakers:
                await rt.deliver_user_messages()
                outcome = await rt.interruptible(rt.conversation_turn(agent, round_number))
                if outcome is None:  # interrupted by a user message: it is heard next
                    await rt.deliver_user_messages()
                    continue
                if stop_phrase and stop_phrase in outcome.text.lower():
                    session.rounds_completed = round_number
                    return Ending(outcome.text, "stop_phrase")
                if rt.over_budget():
                    session.rounds_completed = round_number
                    return Ending(await rt.last_answer(), "token_budget")
            session.rounds_completed = round_number
            rt.save(["rounds_completed"])
            if judge is not None and await judge_says_done(rt, judge, round_number):
                return Ending(await rt.last_answer(), "judge")
            if single_step:
                return None

    async def on_deadline(self, rt: Runtime) -> Ending | None:
        # The session's own deadline is one of round-robin's termination conditions.
        return Ending(await rt.last_answer(), "deadline")


async def judge_says_done(rt: Runtime, judge: SessionAgent, round_number: int) -> bool:
    """Ask the judge whether the conversation reached the goal."""
    history = await rt.history(judge)
    outcome = await rt.turns.run(
        Turn(
            agent=judge,
            prompt=JUDGE_PROMPT.format(goal=rt.session.goal, round=round_number),
            history=history,
            tools=rt.toolbox(judge, read_only=True),
            idempotency_key=rt.key(f"r{round_number}-judge-{judge.label}"),
            round=round_number,
        )
    )
    return outcome.text.strip().upper().startswith("GOAL REACHED")
