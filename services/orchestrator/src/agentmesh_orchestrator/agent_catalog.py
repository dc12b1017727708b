"""Agents in the memory service: create, update (with an AIP-134 mask), get, and the
snapshot of its agents a session keeps.

Agents are stored with their type's default prompts filled in and their templates validated;
a bad one is INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from google.protobuf import field_mask_pb2

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh_common import InvalidArgument, NotFound

from .adapters.memory_client import MemoryClient
from .agents import AGENT_ID, SessionAgent, prepare_agent
from .tools import MEMORY_TOOLS


def invalid(field: str, description: str) -> InvalidArgument:
    """An `InvalidArgument` naming one field."""
    return InvalidArgument.for_field(field, description)


class AgentCatalog:
    def __init__(self, memory: MemoryClient) -> None:
        self._memory = memory

    async def create(
        self, tenant: str, request: orchestrator_pb2.CreateAgentRequest
    ) -> agents_pb2.AgentDefinition:
        if not AGENT_ID.fullmatch(request.agent_id):
            raise invalid("agent_id", "must match [a-z][a-z0-9-]{0,62}")
        definition = agents_pb2.AgentDefinition()
        definition.CopyFrom(request.agent)
        definition.name = f"agents/{request.agent_id}"
        prepared = prepare_agent(definition, field="agent")
        reply = await self._memory.call(
            tenant,
            self._memory.stub.CreateAgent,
            memory_pb2.CreateAgentRequest(
                agent=prepared.definition, agent_id=request.agent_id, request_id=request.request_id
            ),
        )
        return reply.agent

    async def update(
        self, tenant: str, request: orchestrator_pb2.UpdateAgentRequest
    ) -> agents_pb2.AgentDefinition:
        current = await self.get(tenant, request.agent.name)
        merged = agents_pb2.AgentDefinition()
        merged.CopyFrom(current)
        paths = list(request.update_mask.paths)
        if paths and paths != ["*"]:  # AIP-134: "*" (like no mask) replaces the whole agent
            for i, path in enumerate(paths):
                single = field_mask_pb2.FieldMask(paths=[path])
                if not single.IsValidForDescriptor(agents_pb2.AgentDefinition.DESCRIPTOR):
                    raise invalid(
                        f"update_mask.paths[{i}]",
                        f"{path!r} is not a field of AgentDefinition (or use '*' alone)",
                    )
            try:
                # AIP-134: a message field named in the mask is replaced as a whole, so a
                # field left unset in the request is cleared, not kept.
                request.update_mask.MergeMessage(
                    request.agent, merged, replace_message_field=True, replace_repeated_field=True
                )
            except (ValueError, KeyError) as exc:
                raise invalid("update_mask", str(exc)) from None
        else:
            merged.CopyFrom(request.agent)
        merged.name = current.name
        prepared = prepare_agent(merged, field="agent")
        reply = await self._memory.call(
            tenant,
            self._memory.stub.UpdateAgent,
            memory_pb2.UpdateAgentRequest(
                agent=prepared.definition,
                update_mask=field_mask_pb2.FieldMask(),
                request_id=request.request_id,
            ),
        )
        return reply.agent

    async def get(self, tenant: str, name: str) -> agents_pb2.AgentDefinition:
        reply = await self._memory.call(
            tenant, self._memory.stub.GetAgent, memory_pb2.GetAgentRequest(name=name)
        )
        return reply.agent

    async def snapshot(self, tenant: str, session: sessions_pb2.Session) -> list[SessionAgent]:
        """The session's agents, named and inline, prepared for it: a snapshot the session
        keeps, so editing an agent later never changes a team already at work."""
        agents: list[SessionAgent] = []
        for i, name in enumerate(session.agents):
            field = f"session.agents[{i}]"
            if not name.startswith("agents/"):
                raise invalid(field, "must be an agent name, agents/{agent_id}")
            try:
                definition = await self.get(tenant, name)
            except NotFound:
                raise invalid(field, f"no agent named {name}") from None
            agents.append(prepare_agent(definition, field=field, metadata=session.metadata))
        for i, given in enumerate(session.inline_agents):
            field = f"session.inline_agents[{i}]"
            definition = inline_agent(given, field)
            agents.append(prepare_agent(definition, field=field, metadata=session.metadata))
        names = [a.name for a in agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise invalid("session.agents", f"agents appear twice: {', '.join(duplicates)}")
        return agents


def inline_agent(given: agents_pb2.AgentDefinition, field: str) -> agents_pb2.AgentDefinition:
    """An agent defined in a session (CreateSession or AddAgent): named `agents/{id}` like a
    stored one, and without memory tools. Memory belongs to agents created with CreateAgent
    (it outlives the session); an inline agent asking for it would only ever see NOT_FOUND, so
    say so when the session is made."""
    definition = agents_pb2.AgentDefinition()
    definition.CopyFrom(given)
    if definition.name and not definition.name.startswith("agents/"):
        definition.name = f"agents/{definition.name}"
    for j, tool in enumerate(definition.tools):
        if tool in MEMORY_TOOLS:
            agent = definition.name.removeprefix("agents/") or "the agent"
            raise invalid(
                f"{field}.tools[{j}]",
                f"{tool} keeps memory for agents created with CreateAgent: create {agent} "
                "and name it in session.agents, or share session notes "
                "(session_notes_read / session_notes_write)",
            )
    return definition
