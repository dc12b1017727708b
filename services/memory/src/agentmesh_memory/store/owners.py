"""Who memory belongs to: an existing agent (or a built-in pseudo-agent); sizes of values."""

from __future__ import annotations

import json

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh_common import NotFound
from agentmesh_memory.db.tables import agents

__all__ = ["RESERVED_MEMORY_AGENTS", "MemoryAgentNotFound", "require_agent", "value_size"]

#: Built-in pseudo-agents whose memory needs no agent definition: the notes every agent of a
#: session shares (the orchestrator's session_notes tools) are kept as this agent's memory.
RESERVED_MEMORY_AGENTS = frozenset({"session-notes"})


class MemoryAgentNotFound(NotFound):
    default_reason = "AGENT_NOT_FOUND"


async def require_agent(conn: AsyncConnection, tenant: str, agent_id: str) -> None:
    """NOT_FOUND unless the tenant has the agent: memory belongs to an existing agent."""
    if agent_id in RESERVED_MEMORY_AGENTS:
        return
    found = (
        await conn.execute(
            sa.select(agents.c.id).where(
                agents.c.tenant_id == tenant, agents.c.agent_id == agent_id
            )
        )
    ).first()
    if found is None:
        raise MemoryAgentNotFound(
            f"agent 'agents/{agent_id}' not found: memory belongs to an agent created with"
            " CreateAgent",
            metadata={"agent": f"agents/{agent_id}"},
        )


def value_size(value: object) -> int:
    """Bytes of a memory value as compact JSON (what memory statistics count)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
