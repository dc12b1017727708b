"""Tool servers: ``toolServers/{tool_server_id}``, backends implementing ToolService."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import AlreadyExists, NotFound
from agentmesh_memory.db.tables import tool_servers
from agentmesh_memory.names import (
    PageToken,
    check_request_id,
    invalid,
    page_size,
    parse_agent_id,
)

from .base import StoreContext, check_size, check_text, parse_stored, set_time

__all__ = ["ToolServerNotFound", "ToolServerStore"]

MAX_RECORD_BYTES = 256 * 1024


class ToolServerNotFound(NotFound):
    default_reason = "TOOL_SERVER_NOT_FOUND"


def _parse_name(value: str, field: str = "name") -> str:
    prefix, _, server_id = value.partition("/")
    if prefix != "toolServers" or not server_id:
        raise invalid(field, f"{value[:120]!r} is not of the form 'toolServers/{{tool_server_id}}'")
    return parse_agent_id(server_id, field)


class ToolServerStore:
    """Registered tool servers of each tenant."""

    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    @staticmethod
    def _to_proto(row: Any) -> memory_pb2.ToolServerRecord:
        record = parse_stored(memory_pb2.ToolServerRecord, row.document)
        record.name = f"toolServers/{row.tool_server_id}"
        set_time(record.create_time, row.create_time)
        return record

    async def create(
        self, tenant: str, request: memory_pb2.CreateToolServerRequest
    ) -> memory_pb2.CreateToolServerResponse:
        server_id = parse_agent_id(request.tool_server_id, "tool_server_id")
        record = memory_pb2.ToolServerRecord()
        record.CopyFrom(request.tool_server)
        check_text(record.address, 512, "tool_server.address", required=True)
        check_text(record.description, 4000, "tool_server.description")
        if record.call_timeout.ToNanoseconds() < 0:
            raise invalid("tool_server.call_timeout", "must not be negative")
        record.ClearField("name")
        record.ClearField("create_time")
        check_size(record, MAX_RECORD_BYTES, "tool_server")
        check_request_id(request.request_id)

        async def create(conn: AsyncConnection) -> memory_pb2.CreateToolServerResponse:
            exists = await conn.execute(
                sa.select(tool_servers.c.id).where(
                    tool_servers.c.tenant_id == tenant,
                    tool_servers.c.tool_server_id == server_id,
                )
            )
            if exists.first() is not None:
                raise AlreadyExists(
                    f"tool server 'toolServers/{server_id}' already exists",
                    reason="TOOL_SERVER_EXISTS",
                )
            row = (
                await conn.execute(
                    sa.insert(tool_servers)
                    .values(
                        tenant_id=tenant,
                        tool_server_id=server_id,
                        document=record.SerializeToString(),
                        create_time=self._context.now(),
                    )
                    .returning(*tool_servers.c)
                )
            ).one()
            return memory_pb2.CreateToolServerResponse(tool_server=self._to_proto(row))

        return await self._context.idempotent(
            tenant,
            "CreateToolServer",
            request.request_id,
            request,
            memory_pb2.CreateToolServerResponse,
            create,
        )

    async def get(
        self, tenant: str, request: memory_pb2.GetToolServerRequest
    ) -> memory_pb2.GetToolServerResponse:
        server_id = _parse_name(request.name)
        async with self._db.read("GetToolServer") as conn:
            row = (
                await conn.execute(
                    sa.select(tool_servers).where(
                        tool_servers.c.tenant_id == tenant,
                        tool_servers.c.tool_server_id == server_id,
                    )
                )
            ).first()
        if row is None:
            raise ToolServerNotFound(f"tool server '{request.name}' not found")
        return memory_pb2.GetToolServerResponse(tool_server=self._to_proto(row))

    async def list(
        self, tenant: str, request: memory_pb2.ListToolServersRequest
    ) -> memory_pb2.ListToolServersResponse:
        size = page_size(request.page_size)
        query_key = ("toolServers",)
        token = PageToken.decode(request.page_token, query_key)
        query = sa.select(tool_servers).where(tool_servers.c.tenant_id == tenant)
        if token is not None:
            if not isinstance(token.after, int):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(tool_servers.c.id > token.after)
        async with self._db.read("ListToolServers") as conn:
            rows = (await conn.execute(query.order_by(tool_servers.c.id).limit(size + 1))).all()
        response = memory_pb2.ListToolServersResponse(
            tool_servers=[self._to_proto(r) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def delete(
        self, tenant: str, request: memory_pb2.DeleteToolServerRequest
    ) -> memory_pb2.DeleteToolServerResponse:
        server_id = _parse_name(request.name)
        async with self._db.write("DeleteToolServer") as conn:
            result = await conn.execute(
                sa.delete(tool_servers)
                .where(
                    tool_servers.c.tenant_id == tenant,
                    tool_servers.c.tool_server_id == server_id,
                )
                .returning(tool_servers.c.id)
            )
            if result.first() is None:
                raise ToolServerNotFound(f"tool server '{request.name}' not found")
        return memory_pb2.DeleteToolServerResponse()
