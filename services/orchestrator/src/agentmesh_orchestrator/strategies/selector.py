"""SELECTOR: each turn a selector model picks the next speaker, as AutoGen's SelectorGroupChat.

The selector (a built-in agent on `selector.model`, else the first agent's model) is shown the
agents' names and descriptions and the conversation, and answers with structured output
(`{"speaker": ..., "reason": ...}`, the speaker an enum of the candidates, so a small local
model decoding under the schema can only name one of them). The candidates are the members
(but a judge) that `allowed_transitions` allow after the last speaker, without the last
speaker unless `allow_repeated_speaker`; with one candidate nobody is asked. A choice that is
not a candidate (or an answer that is no choice) falls back to round-robin order after the
last speaker. Every choice is announced with an `analysis` event naming the agent and why.

A turn is a round here: max rounds counts turns, and the usual conditions apply (stop
phrase, judge after each turn, token budget, deadline). The last speaker is read from the
conversation, so a replica resuming the session goes on from where it stopped; the selector's
calls have idempotency keys, so a recorded choice is not asked again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict
from google.rpc import code_pb2

from agentmesh.common.v1 import events_pb2, messages_pb2, sessions_pb2
from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.agents import SessionAgent
from agentmesh_orchestrator.domain.agent_types import AgentKind
from agentmesh_orchestrator.runtime import Ending, Runtime, SessionFailure
from agentmesh_orchestrator.termination import Phase, Termination, conversation_termination
from agentmesh_orchestrator.tools import ToolBox
from agentmesh_orchestrator.turns import Turn, TurnFailed

from .base import Strategy, judge_of, require_agents
from .planner_executor import output_rejected

SELECTOR_PROMPT = (
    "You choose who speaks next in a team of AI agents working on a goal. Read the "
    'conversation, then answer with JSON {"speaker": ..., "reason": ...}: speaker is the name '
    "of the candidate best placed to move the work forward now, reason one short sentence."
)
_logger = logging.getLogger(__name__)


class Selector(Strategy):
    """A model picks each next speaker."""

    kind = sessions_pb2.STRATEGY_SELECTOR

    def validate(self, session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
        require_agents(agents)
        spec = session.selector
        check_transitions(spec.allowed_transitions, agents, "session.selector.allowed_transitions")
        if spec.initial_agent:
            check_member(spec.initial_agent, agents, "session.selector.initial_agent")
        if len(spec.selector_prompt) > 8000:
            raise InvalidArgument.for_field(
                "session.selector.selector_prompt", "at most 8000 characters"
            )

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
            step = session.rounds_completed + 1
            rt.round = step
            await rt.deliver_user_messages()
            agent = await self._select(rt, speakers, step)
            outcome = await rt.interruptible(rt.conversation_turn(agent, step))
            if outcome is None:  # interrupted by a user message: it is heard next
                await rt.deliver_user_messages()
            session.rounds_completed = step
            rt.save(["rounds_completed"])
            await rt.check(Phase.AFTER_ROUND)
            if single_step:
                return None

    async def on_deadline(self, rt: Runtime) -> Ending | None:
        return Ending(await rt.last_answer(), "deadline")

    async def _select(
        self, rt: Runtime, speakers: Sequence[SessionAgent], step: int
    ) -> SessionAgent:
        spec = rt.session.selector
        last = await last_speaker(rt, speakers)
        if last is None and spec.initial_agent:
            first = next(a for a in speakers if spec.initial_agent in (a.name, a.label))
            await _announce(rt, first, "the initial agent")
            return first
        candidates = allowed_after(last, speakers, spec)
        if len(candidates) == 1:
            only = candidates[0]
            why = f"the only allowed speaker after {last.label}" if last else "the only speaker"
            await _announce(rt, only, why)
            return only
        choice, reason = await self._ask(rt, candidates, step)
        chosen = next((a for a in candidates if choice in (a.label, a.name)), None)
        if chosen is not None:
            await _announce(rt, chosen, reason or "chosen by the selector")
            return chosen
        fallback = round_robin_after(last, speakers, candidates)
        said = f"{choice!r}" if choice else "no usable answer"
        await _announce(
            rt,
            fallback,
            f"the selector gave {said}, not one of {', '.join(a.label for a in candidates)};"
            " round-robin order decides instead",
        )
        return fallback

    async def _ask(
        self, rt: Runtime, candidates: Sequence[SessionAgent], step: int
    ) -> tuple[str, str]:
        """The selector's choice and reason ("" when its answer was no choice)."""
        spec = rt.session.selector
        selector = rt.default_agent(
            AgentKind.CUSTOM,
            "selector",
            system=spec.selector_prompt or SELECTOR_PROMPT,
            model=spec.model,
            max_tokens=100,  # a name and one short sentence
        )
        names = [a.label for a in candidates]
        schema = {
            "type": "object",
            "additionalProperties": False,
            "required": ["speaker", "reason"],
            "properties": {
                "speaker": {"enum": names},
                "reason": {"type": "string", "maxLength": 120},
            },
        }
        roster = "\n".join(
            f"- {a.label}: {a.definition.description or a.kind.value}" for a in rt.agents
        )
        prompt = (
            f"Goal: {rt.session.goal}\n\nAgents:\n{roster}\n\n"
            f"Who speaks next? Answer with one of: {', '.join(names)}."
        )
        try:
            outcome = await rt.run_turn(
                Turn(
                    agent=selector,
                    prompt=prompt,
                    history=await rt.history(selector),
                    tools=ToolBox({}, (), read_only=True),
                    idempotency_key=rt.key(f"select-r{step}"),
                    response_schema=ParseDict(schema, struct_pb2.Struct()),
                    round=step,
                )
            )
        except TurnFailed as failed:
            if not output_rejected(failed.status):
                raise
            _logger.info("selector answer rejected (%s)", failed.status.message)
            return "", ""
        return parse_choice(
            MessageToDict(outcome.structured) if outcome.structured is not None else outcome.text
        )


def parse_choice(answer: object) -> tuple[str, str]:
    """(speaker, reason) from the selector's answer; ("", "") when it names nobody."""
    document = answer
    if isinstance(answer, str):
        try:
            document = json.loads(answer)
        except ValueError:
            return answer.strip()[:64], ""
    if isinstance(document, Mapping) and isinstance(document.get("speaker"), str):
        return str(document["speaker"]), str(document.get("reason", ""))
    return "", ""


async def _announce(rt: Runtime, agent: SessionAgent, reason: str) -> None:
    await rt.recorder.emit(
        events_pb2.SessionEvent(
            agent=agent.name,
            analysis=events_pb2.Analysis(
                chosen_strategy=sessions_pb2.STRATEGY_SELECTOR,
                selected_agent=agent.name,
                reason=reason,
            ),
        )
    )


async def last_speaker(rt: Runtime, speakers: Sequence[SessionAgent]) -> SessionAgent | None:
    """The speaker of the newest assistant message in the conversation, if any."""
    by_name = {a.name: a for a in speakers}
    for item in reversed(await rt.read_conversation()):
        if item.message.role == messages_pb2.ROLE_ASSISTANT and item.agent in by_name:
            return by_name[item.agent]
    return None


def allowed_after(
    last: SessionAgent | None, speakers: Sequence[SessionAgent], spec: sessions_pb2.SelectorSpec
) -> list[SessionAgent]:
    """Who may speak after `last`: its allowed transitions (everyone when it has none),
    without `last` itself unless repeats are allowed (when that leaves nobody, `last`)."""
    candidates = list(speakers)
    if last is not None:
        for entry in spec.allowed_transitions:
            if entry.from_agent in (last.name, last.label):
                allowed = set(entry.to_agents)
                candidates = [a for a in speakers if a.name in allowed or a.label in allowed]
                break
        if not spec.allow_repeated_speaker:
            others = [a for a in candidates if a is not last]
            candidates = others or candidates
    return candidates or list(speakers)


def round_robin_after(
    last: SessionAgent | None,
    speakers: Sequence[SessionAgent],
    candidates: Sequence[SessionAgent],
) -> SessionAgent:
    """The first candidate after `last` in the members' order (wrapping around)."""
    start = speakers.index(last) + 1 if last is not None else 0
    ordered = [*speakers[start:], *speakers[:start]]
    return next(a for a in ordered if a in candidates)


def check_member(name: str, agents: Sequence[SessionAgent], field: str) -> None:
    """INVALID_ARGUMENT naming `field` unless `name` is a member (resource name or id)."""
    if not any(name in (a.name, a.label) for a in agents):
        raise InvalidArgument.for_field(field, f"{name!r} is not a member of the session")


def check_transitions(
    entries: Sequence[sessions_pb2.AgentTransitions],
    agents: Sequence[SessionAgent],
    field: str,
    *,
    allow_self: bool = True,
) -> None:
    """Every agent named by `entries` is a member; each agent has at most one entry."""
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        check_member(entry.from_agent, agents, f"{field}[{i}].from_agent")
        source = next(a.name for a in agents if entry.from_agent in (a.name, a.label))
        if source in seen:
            raise InvalidArgument.for_field(
                f"{field}[{i}].from_agent", f"{entry.from_agent!r} has an earlier entry"
            )
        seen.add(source)
        if not entry.to_agents:
            raise InvalidArgument.for_field(f"{field}[{i}].to_agents", "name at least one agent")
        for j, target in enumerate(entry.to_agents):
            check_member(target, agents, f"{field}[{i}].to_agents[{j}]")
            if not allow_self and target in (entry.from_agent, source, source.rsplit("/", 1)[-1]):
                raise InvalidArgument.for_field(
                    f"{field}[{i}].to_agents[{j}]", "an agent cannot hand off to itself"
                )
