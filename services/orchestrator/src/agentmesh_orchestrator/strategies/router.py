"""ROUTER: classify the goal as simple, tool or complex, then answer in that shape.

Simple: one agent answers directly; tool: one agent with tools answers; complex: the
planner/executor strategy takes over. Where the goal's shape is clear (one short question; a
list of several parts) the classification needs no model call (`domain/analysis`); otherwise
an analysis call with a JSON schema decides, and an unusable analysis answers directly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh_orchestrator.domain.agent_types import AgentKind
from agentmesh_orchestrator.domain.analysis import shape_of
from agentmesh_orchestrator.runtime import Ending, Runtime
from agentmesh_orchestrator.tools import ToolBox
from agentmesh_orchestrator.turns import Turn, TurnFailed, TurnOutcome

from .base import Strategy
from .planner_executor import PlannerExecutor

ANALYSIS_SCHEMA: Mapping[str, object] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "reason"],
    "properties": {
        "kind": {"enum": ["simple", "tool", "complex"]},
        "reason": {"type": "string", "maxLength": 200},
    },
}
ROUTER_PROMPT = (
    'Classify the goal for a team of AI agents. Answer with JSON {"kind": ..., "reason": ...}'
    " where kind is 'simple' (one agent can answer directly), 'tool' (one agent needs tools "
    "such as a calculator, the time or memory) or 'complex' (it needs a plan of several tasks)."
)
GOAL_KINDS = {
    "simple": events_pb2.GOAL_KIND_SIMPLE,
    "tool": events_pb2.GOAL_KIND_TOOL,
    "complex": events_pb2.GOAL_KIND_COMPLEX,
}
_logger = logging.getLogger(__name__)


class Router(Strategy):
    """Pick the shape of the answer from the goal."""

    kind = sessions_pb2.STRATEGY_ROUTER

    def __init__(self, planning: PlannerExecutor) -> None:
        self._planning = planning

    async def run(self, rt: Runtime, *, single_step: bool) -> Ending:
        tool_texts = [text for t in rt.tools.values() for text in (t.spec.name, t.spec.description)]
        shape = shape_of(rt.session.goal, tool_texts) if rt.settings.router_shortcuts else None
        kind, reason = shape if shape is not None else await _analyse(rt)
        chosen = {
            "simple": sessions_pb2.STRATEGY_ROUND_ROBIN,
            "tool": sessions_pb2.STRATEGY_ROUND_ROBIN,
            "complex": sessions_pb2.STRATEGY_PLANNER_EXECUTOR,
        }[kind]
        await rt.recorder.emit(
            events_pb2.SessionEvent(
                analysis=events_pb2.Analysis(
                    kind=GOAL_KINDS[kind], chosen_strategy=chosen, reason=reason
                )
            )
        )
        if kind == "complex":
            return await self._planning.run(rt, single_step=single_step)
        wants_tools = kind == "tool"
        candidates = [
            a
            for a in rt.agents
            if a.kind not in (AgentKind.PLANNER, AgentKind.SYNTHESIS, AgentKind.VALIDATION)
            and bool(a.definition.tools) == wants_tools
        ]
        if candidates:
            agent = candidates[0]
        elif wants_tools:
            agent = rt.default_agent(AgentKind.EXECUTOR, "tool-user", tools=sorted(rt.tools))
        else:
            agent = rt.default_agent(AgentKind.CUSTOM, "assistant")
        outcome = await rt.conversation_turn(agent, round_number=1)
        rt.session.rounds_completed = 1
        return Ending(outcome.text, "answered")


async def _analyse(rt: Runtime) -> tuple[str, str]:
    """The goal's kind and why, in the model's words."""
    # max_tokens: a kind and one sentence
    analyst = rt.default_agent(AgentKind.CUSTOM, "router", system=ROUTER_PROMPT, max_tokens=80)
    schema = ParseDict(dict(ANALYSIS_SCHEMA), struct_pb2.Struct())
    try:
        outcome: TurnOutcome | None = await rt.run_turn(
            Turn(
                agent=analyst,
                prompt=f"Goal: {rt.session.goal}",
                history=(),
                tools=ToolBox({}, (), read_only=True),
                idempotency_key=rt.key("analysis"),
                response_schema=schema,
            )
        )
    except TurnFailed as failed:
        # A model that cannot give a structured answer must not sink the session.
        _logger.info("analysis failed (%s); answering directly", failed.status.message)
        outcome = None
    return _parse_analysis(outcome)


def _parse_analysis(outcome: TurnOutcome | None) -> tuple[str, str]:
    document: object
    if outcome is None:
        document = {}
    elif outcome.structured is not None:
        document = MessageToDict(outcome.structured)
    else:
        try:
            document = json.loads(outcome.text)
        except ValueError:
            document = {}
    if isinstance(document, dict) and document.get("kind") in GOAL_KINDS:
        return str(document["kind"]), str(document.get("reason", ""))
    # An unusable analysis must not sink the session: one agent answers directly, and says so.
    return "simple", "no usable analysis from the model; one agent answers directly"
