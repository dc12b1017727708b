"""Agent definitions: ``agents/{agent_id}``, the name unique per tenant."""

from __future__ import annotations

import jsonschema
import sqlalchemy as sa
from google.protobuf import field_mask_pb2, json_format
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import agents_pb2, generation_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import AlreadyExists, FieldViolation, NotFound
from agentmesh_memory.db.tables import agent_memory, agents
from agentmesh_memory.names import (
    PageToken,
    invalid,
    invalid_many,
    page_size,
    parse_agent_id,
    parse_agent_name,
)

from .base import StoreContext, insert_ignore, parse_stored, set_time

__all__ = ["AgentNotFound", "AgentStore", "retention_rules", "validate_agent"]

MAX_AGENT_BYTES = 256 * 1024
MUTABLE_FIELDS = (
    "description",
    "type",
    "model",
    "generation",
    "prompts",
    "capabilities",
    "tools",
    "memory_policy",
)
OUTPUT_ONLY = ("name", "create_time", "update_time")


class AgentNotFound(NotFound):
    default_reason = "AGENT_NOT_FOUND"


def _generation_violations(
    config: generation_pb2.GenerationConfig, prefix: str
) -> list[FieldViolation]:
    found: list[FieldViolation] = []

    def bounded(name: str, low: float, high: float) -> None:
        if config.HasField(name):  # type: ignore[arg-type]
            value = getattr(config, name)
            if not low <= value <= high:
                found.append(
                    FieldViolation(f"{prefix}.{name}", f"must be between {low} and {high}")
                )

    bounded("temperature", 0, 2)
    bounded("top_p", 0, 1)
    bounded("frequency_penalty", -2, 2)
    bounded("presence_penalty", -2, 2)
    if config.HasField("max_tokens") and config.max_tokens < 1:
        found.append(FieldViolation(f"{prefix}.max_tokens", "must be at least 1"))
    if config.HasField("repetition_penalty") and config.repetition_penalty <= 0:
        found.append(FieldViolation(f"{prefix}.repetition_penalty", "must be greater than 0"))
    if len(config.stop) > 8:
        found.append(FieldViolation(f"{prefix}.stop", "at most 8 stop sequences"))
    if config.HasField("response_schema"):
        # Checked here, where it enters: otherwise it fails only when an agent runs.
        schema = json_format.MessageToDict(config.response_schema)
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(part) for part in exc.path)
            found.append(
                FieldViolation(
                    f"{prefix}.response_schema",
                    f"not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else ""),
                )
            )
    return found


def validate_agent(agent: agents_pb2.AgentDefinition, prefix: str = "agent") -> None:
    """INVALID_ARGUMENT listing every bad field of a definition."""
    found: list[FieldViolation] = []
    if agent.type == agents_pb2.AGENT_TYPE_UNSPECIFIED:
        found.append(FieldViolation(f"{prefix}.type", "must be set"))
    elif agent.type not in agents_pb2.AgentType.values():
        found.append(FieldViolation(f"{prefix}.type", f"unknown agent type {agent.type}"))
    if len(agent.description) > 4096:
        found.append(FieldViolation(f"{prefix}.description", "at most 4096 characters"))
    found.extend(_generation_violations(agent.generation, f"{prefix}.generation"))
    for label, items in (("capabilities", agent.capabilities), ("tools", agent.tools)):
        if len(items) > 128:
            found.append(FieldViolation(f"{prefix}.{label}", "at most 128 entries"))
        if any(not item.strip() for item in items):
            found.append(FieldViolation(f"{prefix}.{label}", "entries must not be empty"))
    if agent.memory_policy.max_entries_in_context < 0:
        found.append(
            FieldViolation(f"{prefix}.memory_policy.max_entries_in_context", "must be >= 0")
        )
    found.extend(_retention_violations(agent.memory_policy, f"{prefix}.memory_policy.retention"))
    if agent.ByteSize() > MAX_AGENT_BYTES:
        found.append(FieldViolation(prefix, f"at most {MAX_AGENT_BYTES} bytes"))
    if found:
        raise invalid_many(found)


MAX_RETAINED_ENTRIES = 1_000_000


def _retention_violations(policy: agents_pb2.MemoryPolicy, prefix: str) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    seen: set[int] = set()
    for index, rule in enumerate(policy.retention):
        where = f"{prefix}[{index}]"
        if rule.type == agents_pb2.MEMORY_TYPE_UNSPECIFIED:
            found.append(FieldViolation(f"{where}.type", "must be set"))
        elif rule.type not in agents_pb2.MemoryType.values():
            found.append(FieldViolation(f"{where}.type", "unknown memory type"))
        elif rule.type in seen:
            found.append(FieldViolation(f"{where}.type", "one rule per memory type"))
        seen.add(rule.type)
        if not 0 <= rule.max_entries <= MAX_RETAINED_ENTRIES:
            found.append(
                FieldViolation(f"{where}.max_entries", f"must be 0 to {MAX_RETAINED_ENTRIES}")
            )
        if rule.HasField("max_age") and rule.max_age.ToTimedelta().total_seconds() < 1:
            found.append(FieldViolation(f"{where}.max_age", "must be at least 1 second"))
    return found


def retention_rules(agent: agents_pb2.AgentDefinition) -> list[dict[str, int]] | None:
    """The agent's retention rules as stored for the sweeper; None when it has none."""
    rules = [
        {
            "type": int(rule.type),
            "max_entries": int(rule.max_entries),
            "max_age_seconds": int(rule.max_age.ToTimedelta().total_seconds())
            if rule.HasField("max_age")
            else 0,
        }
        for rule in agent.memory_policy.retention
        if rule.max_entries or rule.HasField("max_age")
    ]
    return rules or None


def _to_proto(row: sa.Row[tuple[object, ...]]) -> agents_pb2.AgentDefinition:
    agent = parse_stored(agents_pb2.AgentDefinition, row.document)
    agent.name = f"agents/{row.agent_id}"
    set_time(agent.create_time, row.create_time)
    set_time(agent.update_time, row.update_time)
    return agent


def _document(agent: agents_pb2.AgentDefinition) -> bytes:
    stored = agents_pb2.AgentDefinition()
    stored.CopyFrom(agent)
    for name in OUTPUT_ONLY:
        stored.ClearField(name)  # type: ignore[arg-type]
    return stored.SerializeToString()


class AgentStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def create(
        self, tenant: str, request: memory_pb2.CreateAgentRequest
    ) -> memory_pb2.CreateAgentResponse:
        agent_id = parse_agent_id(request.agent_id)
        if not request.HasField("agent"):
            raise invalid("agent", "must be set")
        validate_agent(request.agent)

        async def create(conn: AsyncConnection) -> memory_pb2.CreateAgentResponse:
            now = self._context.now()
            result = await conn.execute(
                insert_ignore(self._db, agents)
                .values(
                    tenant_id=tenant,
                    agent_id=agent_id,
                    type=request.agent.type,
                    document=_document(request.agent),
                    memory_retention=retention_rules(request.agent),
                    create_time=now,
                    update_time=now,
                )
                .returning(*agents.c)
            )
            row = result.first()
            if row is None:
                raise AlreadyExists(
                    f"agent 'agents/{agent_id}' already exists",
                    reason="AGENT_EXISTS",
                    metadata={"agent": f"agents/{agent_id}"},
                )
            return memory_pb2.CreateAgentResponse(agent=_to_proto(row))

        return await self._context.idempotent(
            tenant,
            "CreateAgent",
            request.request_id,
            request,
            memory_pb2.CreateAgentResponse,
            create,
        )

    async def _row(
        self, conn: AsyncConnection, tenant: str, agent_id: str, *, lock: bool = False
    ) -> sa.Row[tuple[object, ...]]:
        query = sa.select(agents).where(agents.c.tenant_id == tenant, agents.c.agent_id == agent_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
        if row is None:
            raise AgentNotFound(
                f"agent 'agents/{agent_id}' not found", metadata={"agent": f"agents/{agent_id}"}
            )
        return row

    async def get(
        self, tenant: str, request: memory_pb2.GetAgentRequest
    ) -> memory_pb2.GetAgentResponse:
        agent_id = parse_agent_name(request.name)
        async with self._db.read("GetAgent") as conn:
            return memory_pb2.GetAgentResponse(
                agent=_to_proto(await self._row(conn, tenant, agent_id))
            )

    async def list(
        self, tenant: str, request: memory_pb2.ListAgentsRequest
    ) -> memory_pb2.ListAgentsResponse:
        size = page_size(request.page_size)
        if request.type and request.type not in agents_pb2.AgentType.values():
            raise invalid("type", f"unknown agent type {request.type}")
        query_key = ("agents", request.type)
        token = PageToken.decode(request.page_token, query_key)
        query = sa.select(agents).where(agents.c.tenant_id == tenant)
        if request.type:
            query = query.where(agents.c.type == request.type)
        if token is not None:
            query = query.where(agents.c.agent_id > str(token.after))
        query = query.order_by(agents.c.agent_id).limit(size + 1)
        async with self._db.read("ListAgents") as conn:
            rows = (await conn.execute(query)).all()
        response = memory_pb2.ListAgentsResponse(agents=[_to_proto(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = PageToken(rows[size - 1].agent_id).encode(query_key)
        return response

    async def update(
        self, tenant: str, request: memory_pb2.UpdateAgentRequest
    ) -> memory_pb2.UpdateAgentResponse:
        agent_id = parse_agent_name(request.agent.name, "agent.name")
        paths = list(request.update_mask.paths) or list(MUTABLE_FIELDS)
        for path in paths:
            top = path.split(".", 1)[0]
            if top not in MUTABLE_FIELDS:
                raise invalid("update_mask", f"{path!r} cannot be updated")
        mask = field_mask_pb2.FieldMask(paths=paths)
        if not mask.IsValidForDescriptor(agents_pb2.AgentDefinition.DESCRIPTOR):
            raise invalid("update_mask", "names a field that AgentDefinition does not have")

        async def update(conn: AsyncConnection) -> memory_pb2.UpdateAgentResponse:
            row = await self._row(conn, tenant, agent_id, lock=True)
            agent = _to_proto(row)
            mask.MergeMessage(
                request.agent, agent, replace_message_field=True, replace_repeated_field=True
            )
            validate_agent(agent)
            now = self._context.now()
            result = await conn.execute(
                sa.update(agents)
                .where(agents.c.id == row.id)
                .values(
                    type=agent.type,
                    document=_document(agent),
                    memory_retention=retention_rules(agent),
                    update_time=now,
                )
                .returning(*agents.c)
            )
            return memory_pb2.UpdateAgentResponse(agent=_to_proto(result.one()))

        return await self._context.idempotent(
            tenant,
            "UpdateAgent",
            request.request_id,
            request,
            memory_pb2.UpdateAgentResponse,
            update,
        )

    async def delete(
        self, tenant: str, request: memory_pb2.DeleteAgentRequest
    ) -> memory_pb2.DeleteAgentResponse:
        agent_id = parse_agent_name(request.name)

        async def delete(conn: AsyncConnection) -> memory_pb2.DeleteAgentResponse:
            result = await conn.execute(
                sa.delete(agents)
                .where(agents.c.tenant_id == tenant, agents.c.agent_id == agent_id)
                .returning(agents.c.id)
            )
            if result.first() is None:
                raise AgentNotFound(
                    f"agent 'agents/{agent_id}' not found", metadata={"agent": f"agents/{agent_id}"}
                )
            # Memory belongs to an agent: it goes with it (none may exist without one).
            await conn.execute(
                sa.delete(agent_memory).where(
                    agent_memory.c.tenant_id == tenant, agent_memory.c.agent_id == agent_id
                )
            )
            return memory_pb2.DeleteAgentResponse()

        return await self._context.idempotent(
            tenant,
            "DeleteAgent",
            request.request_id,
            request,
            memory_pb2.DeleteAgentResponse,
            delete,
        )
