"""HANDOFF: the active agent answers, or hands the conversation to another with a note.

As AutoGen's Swarm and the OpenAI Agents SDK's handoffs: the active agent is offered one
generated tool per agent it may hand off to (`transfer_to_<agent>`, with a `note` argument).
Calling one ends its turn with a `handoff` event; the named agent becomes active and takes
the next turn, told who handed over and the note. An answer without a handoff ends the
session with that answer ("answered"). After `max_handoffs` handoffs the active agent is
offered no handoff tools and answers itself. The usual conditions apply (a turn is a round;
max rounds, unless set, allows every handoff plus the answer).

The active agent and the handoffs so far are read from the conversation (a handoff is the
handing agent's message with its transfer call), so a replica resuming the session goes on
with the agent that was active.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict
from google.rpc import code_pb2

from agentmesh.common.v1 import events_pb2, messages_pb2, sessions_pb2, tools_pb2
from agentmesh_common import InvalidArgument
from agentmesh_orchestrator.agents import SessionAgent
from agentmesh_orchestrator.domain.templates import TemplateValues
from agentmesh_orchestrator.runtime import HANDOFF_TOOL_PREFIX, Ending, Runtime, SessionFailure
from agentmesh_orchestrator.termination import Phase, Termination, conversation_termination
from agentmesh_orchestrator.tools import Tool, ToolBox, ToolCallContext, ToolError
from agentmesh_orchestrator.turns import Turn, TurnOutcome

from .base import Strategy, judge_of, require_agents
from .selector import check_member, check_transitions

DEFAULT_MAX_HANDOFFS = 10
MAX_HANDOFFS = 100


@dataclass
class _State:
    """Who is active, how they got the conversation, and how many handoffs there were."""

    active: SessionAgent
    note: str = ""
    handed_by: str = ""
    handoffs: int = 0


class Handoff(Strategy):
    """Agents hand the conversation to each other."""

    kind = sessions_pb2.STRATEGY_HANDOFF

    def validate(self, session: sessions_pb2.Session, agents: Sequence[SessionAgent]) -> None:
        require_agents(agents)
        spec = session.handoff
        check_transitions(spec.handoffs, agents, "session.handoff.handoffs", allow_self=False)
        if spec.initial_agent:
            check_member(spec.initial_agent, agents, "session.handoff.initial_agent")
        if not 0 <= spec.max_handoffs <= MAX_HANDOFFS:
            raise InvalidArgument.for_field(
                "session.handoff.max_handoffs", f"must be between 0 and {MAX_HANDOFFS}"
            )

    def termination(self, rt: Runtime) -> Termination:
        limits = rt.limits
        if not rt.session.limits.max_rounds:  # every handoff, then the answer
            limits = dataclasses.replace(limits, max_rounds=_cap(rt.session) + 1)
        return conversation_termination(rt.session, limits, judge_of(rt))

    async def run(self, rt: Runtime, *, single_step: bool) -> Ending | None:
        session = rt.session
        judge = judge_of(rt)
        members = [a for a in rt.agents if a is not judge]
        if not members:
            raise SessionFailure(code_pb2.FAILED_PRECONDITION, "the session has no agents to speak")
        state = await _recover(rt, members)
        while True:
            await rt.check(Phase.BEFORE_ROUND)
            step = session.rounds_completed + 1
            rt.round = step
            await rt.deliver_user_messages()
            targets = (
                _targets(session.handoff, state.active, members)
                if state.handoffs < _cap(session)
                else []
            )
            handed: list[tuple[SessionAgent, str]] = []
            outcome = await rt.interruptible(_turn(rt, state, targets, step, handed))
            session.rounds_completed = step
            rt.save(["rounds_completed"])
            if outcome is None:  # interrupted by a user message: the same agent hears it next
                await rt.deliver_user_messages()
            elif handed:
                target, note = handed[0]
                state = _State(
                    active=target,
                    note=note,
                    handed_by=state.active.label,
                    handoffs=state.handoffs + 1,
                )
            else:
                await rt.check(Phase.AFTER_ROUND)
                return Ending(outcome.text, "answered")
            await rt.check(Phase.AFTER_ROUND)
            if single_step:
                return None

    async def on_deadline(self, rt: Runtime) -> Ending | None:
        return Ending(await rt.last_answer(), "deadline")


def _cap(session: sessions_pb2.Session) -> int:
    return session.handoff.max_handoffs or DEFAULT_MAX_HANDOFFS


def _targets(
    spec: sessions_pb2.HandoffSpec, active: SessionAgent, members: Sequence[SessionAgent]
) -> list[SessionAgent]:
    """Who `active` may hand off to: its entry, else (no entry) every other member when the
    spec names no handoffs at all, else nobody."""
    for entry in spec.handoffs:
        if entry.from_agent in (active.name, active.label):
            allowed = set(entry.to_agents)
            return [a for a in members if a.name in allowed or a.label in allowed]
    return [] if spec.handoffs else [a for a in members if a is not active]


def tool_name(agent: SessionAgent) -> str:
    """The handoff tool for `agent`: `transfer_to_<id>`, within the 64 characters a tool
    name may have."""
    name = HANDOFF_TOOL_PREFIX + agent.label.replace("-", "_")
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(agent.label.encode()).hexdigest()[:8]
    return f"{name[:55]}_{digest}"


async def _turn(
    rt: Runtime,
    state: _State,
    targets: Sequence[SessionAgent],
    step: int,
    handed: list[tuple[SessionAgent, str]],
) -> TurnOutcome:
    agent = state.active
    handoff_tools = {tool_name(t): _handoff_tool(rt, agent, t, state, handed) for t in targets}
    history = await rt.history(agent)
    prompt = agent.user_template.render(
        TemplateValues(
            goal=rt.session.goal,
            round=step,
            history_count=len(history),
            metadata=rt.session.metadata,
        )
    )
    if state.handed_by:
        prompt += f"\n\n{state.handed_by} handed the conversation to you: {state.note}"
    if targets:
        prompt += (
            "\n\nAnswer yourself if you can. Otherwise hand the conversation to the agent best"
            " placed to answer with its transfer tool, and a note of what it needs to know."
        )
    return await rt.remembered_turn(
        Turn(
            agent=agent,
            prompt=prompt,
            history=history,
            tools=ToolBox(
                {**rt.tools, **handoff_tools},
                [*agent.definition.tools, *handoff_tools],
                read_only=False,
                approval=agent.definition.tool_approval,
            ),
            idempotency_key=rt.key(f"r{step}-{agent.label}"),
            remember=True,
            round=step,
            final_tools=frozenset(handoff_tools),
        )
    )


def _handoff_tool(
    rt: Runtime,
    source: SessionAgent,
    target: SessionAgent,
    state: _State,
    handed: list[tuple[SessionAgent, str]],
) -> Tool:
    async def transfer(_: ToolCallContext, arguments: struct_pb2.Struct) -> struct_pb2.Struct:
        if handed:
            raise ToolError("FAILED_PRECONDITION", "the conversation was already handed off")
        note = arguments.fields["note"].string_value if "note" in arguments.fields else ""
        handed.append((target, note))
        # (A resuming replica learns who is active from the conversation: the handing
        # agent's message, with this call, is stored with the turn.)
        await rt.recorder.emit(
            events_pb2.SessionEvent(
                agent=source.name,
                handoff=events_pb2.Handoff(
                    from_agent=source.name,
                    to_agent=target.name,
                    note=note,
                    count=state.handoffs + 1,
                ),
            )
        )
        result = struct_pb2.Struct()
        result.update({"transferred_to": target.label})
        return result

    description = target.definition.description or f"a {target.kind.value} agent"
    return Tool(
        tools_pb2.ToolSpec(
            name=tool_name(target),
            description=f"Hand the conversation to {target.label} ({description}).",
            parameters_schema=ParseDict(
                {
                    "type": "object",
                    "properties": {
                        "note": {
                            "type": "string",
                            "maxLength": 2000,
                            "description": f"what {target.label} needs to know to go on",
                        }
                    },
                    "required": ["note"],
                },
                struct_pb2.Struct(),
            ),
            permission=tools_pb2.TOOL_PERMISSION_READ_ONLY,
        ),
        transfer,
    )


async def _recover(rt: Runtime, members: Sequence[SessionAgent]) -> _State:
    """The state the conversation shows: the target of the newest handoff (else the initial
    agent) is active; handoffs are counted from the members' transfer calls."""
    spec = rt.session.handoff
    by_tool = {tool_name(a): a for a in members}
    initial = next(
        (a for a in members if spec.initial_agent and spec.initial_agent in (a.name, a.label)),
        members[0],
    )
    state = _State(active=initial)
    for item in await rt.read_conversation():
        message = item.message
        if message.role != messages_pb2.ROLE_ASSISTANT:
            continue
        for call in message.tool_calls:
            target = by_tool.get(call.name)
            if target is not None:
                note = _note(call)
                state = _State(
                    active=target,
                    note=note,
                    handed_by=item.agent.rsplit("/", 1)[-1],
                    handoffs=state.handoffs + 1,
                )
                break
    return state


def _note(call: messages_pb2.ToolCall) -> str:
    fields = call.arguments.fields
    return fields["note"].string_value if "note" in fields else ""
