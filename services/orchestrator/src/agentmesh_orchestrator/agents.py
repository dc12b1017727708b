"""Agent definitions made ready for a session: defaults filled in, templates validated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh_common import InvalidArgument

from .domain.agent_types import AgentKind, with_defaults
from .domain.templates import PromptTemplate, check_metadata, parse_template

AGENT_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
_KINDS = {
    agents_pb2.AGENT_TYPE_PLANNER: AgentKind.PLANNER,
    agents_pb2.AGENT_TYPE_EXECUTOR: AgentKind.EXECUTOR,
    agents_pb2.AGENT_TYPE_RESEARCH: AgentKind.RESEARCH,
    agents_pb2.AGENT_TYPE_SYNTHESIS: AgentKind.SYNTHESIS,
    agents_pb2.AGENT_TYPE_VALIDATION: AgentKind.VALIDATION,
    agents_pb2.AGENT_TYPE_CRITIC: AgentKind.CRITIC,
    agents_pb2.AGENT_TYPE_CUSTOM: AgentKind.CUSTOM,
}
AGENT_TYPE_BY_KIND = {kind: value for value, kind in _KINDS.items()}
MAX_PROMPT_CHARS = 32_000


@dataclass(frozen=True)
class SessionAgent:
    """An agent as it takes part in a session."""

    name: str
    definition: agents_pb2.AgentDefinition
    kind: AgentKind
    user_template: PromptTemplate

    @property
    def label(self) -> str:
        """Short name for prompts and display: the id part of the resource name."""
        return self.name.rsplit("/", 1)[-1]


def kind_of(definition: agents_pb2.AgentDefinition) -> AgentKind:
    """The agent's kind; UNSPECIFIED is CUSTOM."""
    return _KINDS.get(definition.type, AgentKind.CUSTOM)


def prepare_agent(
    definition: agents_pb2.AgentDefinition,
    *,
    field: str = "agent",
    metadata: Mapping[str, str] | None = None,
) -> SessionAgent:
    """Validate `definition` and fill empty prompts with its type's defaults.

    Raises `InvalidArgument` naming the field at fault (`field` prefixes the names).
    """
    if not definition.name:
        raise InvalidArgument.for_field(f"{field}.name", "required")
    for prompt_field in ("system", "user_template", "context_instructions"):
        if len(getattr(definition.prompts, prompt_field)) > MAX_PROMPT_CHARS:
            raise InvalidArgument.for_field(
                f"{field}.prompts.{prompt_field}", f"at most {MAX_PROMPT_CHARS} characters"
            )
    kind = kind_of(definition)
    prompts = with_defaults(
        kind,
        system=definition.prompts.system,
        user_template=definition.prompts.user_template,
        context_instructions=definition.prompts.context_instructions,
    )
    template_field = f"{field}.prompts.user_template"
    template = parse_template(prompts.user_template, template_field)
    if metadata is not None:
        check_metadata(template, metadata, template_field)
    filled = agents_pb2.AgentDefinition()
    filled.CopyFrom(definition)
    filled.prompts.system = prompts.system
    filled.prompts.user_template = prompts.user_template
    filled.prompts.context_instructions = prompts.context_instructions
    if not filled.generation.max_tokens:
        filled.generation.max_tokens = prompts.max_tokens
    if filled.type == agents_pb2.AGENT_TYPE_UNSPECIFIED:
        filled.type = agents_pb2.AGENT_TYPE_CUSTOM
    filled.tools.extend(t for t in prompts.tools if t not in filled.tools)
    return SessionAgent(name=definition.name, definition=filled, kind=kind, user_template=template)


async def resolve_agents(tenant: str, session: sessions_pb2.Session) -> list[SessionAgent]:
    """A session's agents from the snapshot it keeps (used when a run starts)."""
    return [
        prepare_agent(definition, field=f"session.inline_agents[{i}]")
        for i, definition in enumerate(session.inline_agents)
    ]
