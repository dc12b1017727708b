"""GetAgentStats: what one agent did over a time window, computed from the usage ledger.

Every figure comes from the agent's ledger rows (one per model call) in the window: sessions
are distinct sessions, turns are calls with ``call_index`` 0 (a turn's first call), latency
percentiles are nearest-rank over the calls' wall times (read with ORDER BY ... OFFSET, which
both engines index; SQLite has no percentile function).
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa

from agentmesh.common.v1 import stats_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import NotFound
from agentmesh_memory.db.tables import agents, executions
from agentmesh_memory.names import invalid, parse_agent_name

from .base import StoreContext, duration_from_us, set_time, to_datetime

__all__ = ["AgentStatsStore"]

SUCCEEDED = memory_pb2.EXECUTION_OUTCOME_SUCCEEDED
FAILED = memory_pb2.EXECUTION_OUTCOME_FAILED
CANCELLED = memory_pb2.EXECUTION_OUTCOME_CANCELLED


class AgentStatsNotFound(NotFound):
    default_reason = "AGENT_NOT_FOUND"


def _count_if(condition: Any) -> Any:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


class AgentStatsStore:
    """Per-agent statistics over the ledger."""

    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def stats(
        self, tenant: str, request: kpb.GetAgentStatsRequest
    ) -> kpb.GetAgentStatsResponse:
        agent_id = parse_agent_name(request.agent, "agent")
        name = f"agents/{agent_id}"
        where: list[Any] = [executions.c.tenant_id == tenant, executions.c.agent == name]
        if request.HasField("start_time"):
            where.append(executions.c.create_time >= to_datetime(request.start_time))
        if request.HasField("end_time"):
            where.append(executions.c.create_time < to_datetime(request.end_time))
        if (
            request.HasField("start_time")
            and request.HasField("end_time")
            and to_datetime(request.end_time) <= to_datetime(request.start_time)
        ):
            raise invalid("end_time", "must be after start_time")
        totals = sa.select(
            sa.func.count().label("calls"),
            sa.func.count(sa.distinct(executions.c.session_id)).label("sessions"),
            _count_if(executions.c.call_index == 0).label("turns"),
            _count_if(executions.c.outcome == FAILED).label("errors"),
            _count_if(executions.c.outcome == CANCELLED).label("cancelled"),
            sa.func.coalesce(sa.func.sum(executions.c.prompt_tokens), 0).label("prompt"),
            sa.func.coalesce(sa.func.sum(executions.c.completion_tokens), 0).label("completion"),
            sa.func.coalesce(sa.func.sum(executions.c.total_tokens), 0).label("total"),
            sa.func.coalesce(sa.func.sum(executions.c.cached_prompt_tokens), 0).label("cached"),
            sa.func.coalesce(sa.func.sum(executions.c.reasoning_tokens), 0).label("reasoning"),
            sa.func.coalesce(sa.func.sum(executions.c.cost_micros_usd), 0).label("cost"),
            _count_if(executions.c.estimated).label("estimated"),
            sa.func.max(executions.c.create_time).label("last_active"),
        ).where(*where)
        async with self._db.read("GetAgentStats") as conn:
            row = (await conn.execute(totals)).one()
            if row.calls == 0 and not await self._known(conn, tenant, agent_id):
                raise AgentStatsNotFound(f"agent {name!r} not found", metadata={"agent": name})
            p50 = await self._percentile(conn, where, row.calls, 0.50)
            p95 = await self._percentile(conn, where, row.calls, 0.95)
        stats = stats_pb2.AgentStats(
            agent=name,
            sessions=int(row.sessions),
            turns=int(row.turns),
            model_calls=int(row.calls),
            errors=int(row.errors),
            cancelled=int(row.cancelled),
            latency_p50=duration_from_us(p50),
            latency_p95=duration_from_us(p95),
        )
        usage = stats.usage
        usage.prompt_tokens = int(row.prompt)
        usage.completion_tokens = int(row.completion)
        usage.total_tokens = int(row.total)
        usage.cached_prompt_tokens = int(row.cached)
        usage.reasoning_tokens = int(row.reasoning)
        usage.cost_micros_usd = int(row.cost)
        usage.estimated = int(row.estimated) > 0
        if request.HasField("start_time"):
            stats.start_time.CopyFrom(request.start_time)
        if request.HasField("end_time"):
            stats.end_time.CopyFrom(request.end_time)
        set_time(stats.last_active_time, row.last_active)
        return kpb.GetAgentStatsResponse(stats=stats)

    @staticmethod
    async def _known(conn: Any, tenant: str, agent_id: str) -> bool:
        found = await conn.execute(
            sa.select(agents.c.id).where(
                agents.c.tenant_id == tenant, agents.c.agent_id == agent_id
            )
        )
        return found.first() is not None

    @staticmethod
    async def _percentile(conn: Any, where: list[Any], count: int, fraction: float) -> int:
        """Nearest-rank percentile of call latency in microseconds (0 without calls)."""
        if count == 0:
            return 0
        rank = max(math.ceil(fraction * count), 1)
        value = (
            await conn.execute(
                sa.select(executions.c.latency_us)
                .where(*where)
                .order_by(executions.c.latency_us)
                .offset(rank - 1)
                .limit(1)
            )
        ).scalar()
        return int(value or 0)
