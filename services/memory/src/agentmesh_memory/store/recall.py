"""Agent memory beyond single entries: recall by full-text search, usage statistics, retention.

* `search`: an agent's entries for a user ranked by how well their keys and values match a
  text (the engine's full-text index), optionally filled up with the most recently used
  others and counted as read (what recall into an agent's context does).
* `stats`: entries, bytes, reads and last access per agent and user, and per memory type.
* `sweep_retention`: each agent's retention rules (maximum entries and maximum age per memory
  type, from its memory policy), applied by the service's background sweeper.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import agents_pb2, knowledge_pb2, stats_pb2
from agentmesh.memory.v1 import knowledge_pb2 as kpb
from agentmesh_common import InvalidArgument
from agentmesh_memory.db.tables import agent_memory, agents
from agentmesh_memory.names import (
    ANY_USER,
    PageToken,
    invalid,
    page_size,
    parse_agent_id,
    parse_memory_parent,
    parse_user_id,
)

from .base import StoreContext, set_time
from .fulltext import SearchQuery, full_text_index, parse_query
from .memories import live, memory_to_proto
from .owners import require_agent

__all__ = ["MemoryInsights"]

_logger = logging.getLogger("agentmesh.memory.recall")
MAX_RECALL = 100


def _last_used() -> Any:
    """When an entry was last read or written, whichever is later."""
    return sa.case(
        (agent_memory.c.access_time > agent_memory.c.update_time, agent_memory.c.access_time),
        else_=agent_memory.c.update_time,
    )


def _parse_stats_parent(value: str) -> tuple[str | None, str | None]:
    """``agents/{a}/users/{u}`` with ``-`` allowed for the user, or for both."""
    parts = value.split("/")
    if len(parts) == 4 and parts[0] == "agents" and parts[2] == "users":
        agent = None if parts[1] == ANY_USER else parse_agent_id(parts[1], "parent")
        if agent is None and parts[3] != ANY_USER:
            raise invalid("parent", "with every agent ('-'), the user must be '-' too")
        user = None if parts[3] == ANY_USER else parse_user_id(parts[3], "parent")
        return agent, user
    raise invalid(
        "parent", f"{value[:120]!r} is not of the form 'agents/{{agent_id}}/users/{{user_id}}'"
    )


class MemoryInsights:
    """Recall, statistics and retention of agent memory."""

    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db
        self._index = full_text_index(context.db.dialect)

    async def search(
        self, tenant: str, request: kpb.SearchMemoriesRequest
    ) -> kpb.SearchMemoriesResponse:
        agent_id, user_id = parse_memory_parent(request.parent)
        if user_id is None:
            raise invalid("parent", "search one user's memories: agents/{agent_id}/users/{user_id}")
        size = request.page_size or 10
        if not 1 <= size <= MAX_RECALL:
            raise invalid("page_size", f"must be between 1 and {MAX_RECALL} (0 for 10)")
        for i, kind in enumerate(request.types):
            if (
                kind == agents_pb2.MEMORY_TYPE_UNSPECIFIED
                or kind not in agents_pb2.MemoryType.values()
            ):
                raise invalid(f"types[{i}]", "must be a memory type")
        query: SearchQuery | None = None
        try:
            query = parse_query(request.query, knowledge_pb2.SEARCH_MODE_ANY_TERM, max_chars=4000)
        except InvalidArgument:
            if not request.fill_with_recent or len(request.query) > 4000:
                raise
            # Nothing to match (no words): the most recently used entries only.
        now = self._context.now()
        where = [
            agent_memory.c.tenant_id == tenant,
            agent_memory.c.agent_id == agent_id,
            agent_memory.c.user_id == user_id,
            live(now),
        ]
        if request.types:
            where.append(agent_memory.c.type.in_(list(request.types)))
        transaction = self._db.write if request.record_access else self._db.read
        async with transaction("SearchMemories") as conn:
            await require_agent(conn, tenant, agent_id)
            matched: list[int] = []
            if query is not None:
                hits = await conn.execute(self._index.memory_hits(query, where).limit(size))
                matched = [int(hit.id) for hit in hits]
            ids = list(matched)
            if request.fill_with_recent and len(ids) < size:
                recent = sa.select(agent_memory.c.id).where(*where)
                if ids:
                    recent = recent.where(agent_memory.c.id.not_in(ids))
                recent = recent.order_by(_last_used().desc(), agent_memory.c.id.desc())
                ids += [
                    int(i) for i in (await conn.execute(recent.limit(size - len(ids)))).scalars()
                ]
            if not ids:
                return kpb.SearchMemoriesResponse()
            if request.record_access:
                await conn.execute(
                    sa.update(agent_memory)
                    .where(agent_memory.c.id.in_(ids))
                    .values(access_time=now, access_count=agent_memory.c.access_count + 1)
                )
            rows = {
                int(row.id): row
                for row in await conn.execute(
                    sa.select(agent_memory).where(agent_memory.c.id.in_(ids))
                )
            }
        return kpb.SearchMemoriesResponse(
            entries=[memory_to_proto(rows[i]) for i in ids if i in rows], matched=len(matched)
        )

    async def stats(
        self, tenant: str, request: kpb.GetMemoryStatsRequest
    ) -> kpb.GetMemoryStatsResponse:
        agent_id, user_id = _parse_stats_parent(request.parent)
        size = page_size(request.page_size)
        query_key = ("memoryStats", request.parent)
        token = PageToken.decode(request.page_token, query_key)
        now = self._context.now()
        where = [agent_memory.c.tenant_id == tenant, live(now)]
        if agent_id is not None:
            where.append(agent_memory.c.agent_id == agent_id)
        if user_id is not None:
            where.append(agent_memory.c.user_id == user_id)
        figures = [
            sa.func.count().label("entries"),
            sa.func.coalesce(sa.func.sum(agent_memory.c.value_bytes), 0).label("bytes"),
            sa.func.coalesce(sa.func.sum(agent_memory.c.access_count), 0).label("reads"),
            sa.func.max(agent_memory.c.access_time).label("last_access"),
            sa.func.max(agent_memory.c.update_time).label("last_update"),
        ]
        keys = sa.select(agent_memory.c.agent_id, agent_memory.c.user_id).where(*where)
        if token is not None:
            after_agent, _, after_user = str(token.after).partition("/")
            keys = keys.where(
                sa.or_(
                    agent_memory.c.agent_id > after_agent,
                    sa.and_(
                        agent_memory.c.agent_id == after_agent,
                        agent_memory.c.user_id > after_user,
                    ),
                )
            )
        keys = (
            keys.group_by(agent_memory.c.agent_id, agent_memory.c.user_id)
            .order_by(agent_memory.c.agent_id, agent_memory.c.user_id)
            .limit(size + 1)
        )
        async with self._db.read("GetMemoryStats") as conn:
            if agent_id is not None:
                await require_agent(conn, tenant, agent_id)
            page = (await conn.execute(keys)).all()
            rows: Sequence[Any] = []
            if page:
                bounded = [
                    *where,
                    sa.tuple_(agent_memory.c.agent_id, agent_memory.c.user_id).in_(
                        [(r.agent_id, r.user_id) for r in page[:size]]
                    ),
                ]
                rows = (
                    await conn.execute(
                        sa.select(
                            agent_memory.c.agent_id,
                            agent_memory.c.user_id,
                            agent_memory.c.type,
                            *figures,
                        )
                        .where(*bounded)
                        .group_by(
                            agent_memory.c.agent_id, agent_memory.c.user_id, agent_memory.c.type
                        )
                    )
                ).all()
            totals = (
                await conn.execute(
                    sa.select(agent_memory.c.type, *figures)
                    .where(*where)
                    .group_by(agent_memory.c.type)
                )
            ).all()
        response = kpb.GetMemoryStatsResponse()
        by_key: dict[tuple[str, str], stats_pb2.MemoryStats] = {}
        for key in page[:size]:
            by_key[(key.agent_id, key.user_id)] = response.stats.add(
                agent=f"agents/{key.agent_id}", user=key.user_id
            )
        for row in sorted(rows, key=lambda r: int(r.type)):
            _add(by_key[(row.agent_id, row.user_id)], row)
        response.total.CopyFrom(stats_pb2.MemoryStats())
        if agent_id is not None:
            response.total.agent = f"agents/{agent_id}"
        if user_id is not None:
            response.total.user = user_id
        for row in sorted(totals, key=lambda r: int(r.type)):
            _add(response.total, row)
        if len(page) > size:
            last_key = page[size - 1]
            response.next_page_token = PageToken(f"{last_key.agent_id}/{last_key.user_id}").encode(
                query_key
            )
        return response

    async def sweep_retention(self) -> int:
        """Apply every agent's retention rules (all tenants); returns the entries deleted."""
        async with self._db.read("ListRetention") as conn:
            owners = (
                await conn.execute(
                    sa.select(
                        agents.c.tenant_id, agents.c.agent_id, agents.c.memory_retention
                    ).where(agents.c.memory_retention.is_not(None))
                )
            ).all()
        deleted = 0
        for owner in owners:
            rules: Sequence[dict[str, int]] = owner.memory_retention or []
            for rule in rules:
                try:
                    deleted += await self._apply(owner.tenant_id, owner.agent_id, rule)
                except Exception:  # one agent's failure must not stop the others
                    _logger.warning("retention of agents/%s failed", owner.agent_id, exc_info=True)
        return deleted

    async def _apply(self, tenant: str, agent_id: str, rule: dict[str, int]) -> int:
        scope = [
            agent_memory.c.tenant_id == tenant,
            agent_memory.c.agent_id == agent_id,
            agent_memory.c.type == int(rule.get("type", 0)),
        ]
        deleted = 0
        async with self._db.write("SweepRetention") as conn:
            max_age = int(rule.get("max_age_seconds", 0))
            if max_age > 0:
                cutoff = self._context.now() - timedelta(seconds=max_age)
                result = await conn.execute(
                    sa.delete(agent_memory).where(*scope, agent_memory.c.update_time < cutoff)
                )
                deleted += int(result.rowcount or 0)
            max_entries = int(rule.get("max_entries", 0))
            if max_entries > 0:
                deleted += await _keep_newest(conn, scope, max_entries)
        return deleted


async def _keep_newest(conn: AsyncConnection, scope: list[Any], keep: int) -> int:
    """Delete all but the `keep` most recently used entries of each user within `scope`."""
    ranked = (
        sa.select(
            agent_memory.c.id,
            sa.func.row_number()
            .over(
                partition_by=agent_memory.c.user_id,
                order_by=(_last_used().desc(), agent_memory.c.id.desc()),
            )
            .label("position"),
        )
        .where(*scope)
        .subquery()
    )
    doomed = sa.select(ranked.c.id).where(ranked.c.position > keep)
    result = await conn.execute(sa.delete(agent_memory).where(agent_memory.c.id.in_(doomed)))
    return int(result.rowcount or 0)


def _add(target: stats_pb2.MemoryStats, row: Any) -> None:
    """Add one (agent, user, type) or (type) aggregate row to a stats message."""
    entries, size, reads = int(row.entries), int(row.bytes), int(row.reads)
    target.entries += entries
    target.bytes += size
    target.reads += reads
    target.by_type.add(type=row.type, entries=entries, bytes=size, reads=reads)
    if row.last_access is not None and (
        not target.HasField("last_access_time")
        or target.last_access_time.ToDatetime() < row.last_access.replace(tzinfo=None)
    ):
        set_time(target.last_access_time, row.last_access)
    if row.last_update is not None and (
        not target.HasField("last_update_time")
        or target.last_update_time.ToDatetime() < row.last_update.replace(tzinfo=None)
    ):
        set_time(target.last_update_time, row.last_update)
