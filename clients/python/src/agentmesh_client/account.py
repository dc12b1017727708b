"""Client calls for what belongs to a tenant beyond sessions: agent memory, user settings,
tool servers and tools, models and provider status, usage. Part of `AgentmeshClient` (a
mixin over its stub and deadline)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2

from agentmesh.common.v1 import (
    agents_pb2,
    memory_entries_pb2,
    operations_pb2,
    user_settings_pb2,
)
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc

__all__ = ["AccountCalls", "duration"]


def duration(seconds: float) -> duration_pb2.Duration:
    """A `google.protobuf.Duration` of `seconds` (nanosecond precision)."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


class AccountCalls:
    """Memory, settings, tool servers, tools, models, provider status and usage."""

    _stub: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub
    _call: Callable[..., Awaitable[Any]]

    async def put_memory(
        self,
        name: str,
        value: struct_pb2.Value,
        *,
        type: agents_pb2.MemoryType.ValueType = agents_pb2.MEMORY_TYPE_LONG_TERM,
        ttl_seconds: float | None = None,
    ) -> memory_entries_pb2.MemoryEntry:
        request = orchestrator_pb2.PutMemoryRequest(
            entry=memory_entries_pb2.MemoryEntry(name=name, type=type, value=value),
            request_id=uuid.uuid4().hex,
        )
        if ttl_seconds is not None:
            request.ttl.CopyFrom(duration(ttl_seconds))
        reply = await self._call(self._stub.PutMemory, request)
        return reply.entry  # type: ignore[no-any-return]

    async def get_memory(self, name: str) -> memory_entries_pb2.MemoryEntry:
        reply = await self._call(self._stub.GetMemory, orchestrator_pb2.GetMemoryRequest(name=name))
        return reply.entry  # type: ignore[no-any-return]

    async def list_memories(
        self,
        parent: str,
        *,
        type: agents_pb2.MemoryType.ValueType = agents_pb2.MEMORY_TYPE_UNSPECIFIED,
    ) -> list[memory_entries_pb2.MemoryEntry]:
        """One user's entries (or every user's, with the user "-"), of one type when given."""
        reply = await self._call(
            self._stub.ListMemories,
            orchestrator_pb2.ListMemoriesRequest(parent=parent, page_size=1000, type=type),
        )
        return list(reply.entries)

    async def delete_memory(self, name: str) -> None:
        await self._call(
            self._stub.DeleteMemory,
            orchestrator_pb2.DeleteMemoryRequest(name=name, request_id=uuid.uuid4().hex),
        )

    async def get_user_settings(self, user: str) -> user_settings_pb2.UserSettings:
        reply = await self._call(
            self._stub.GetUserSettings,
            orchestrator_pb2.GetUserSettingsRequest(name=f"users/{user}/settings"),
        )
        return reply.settings  # type: ignore[no-any-return]

    async def update_user_settings(
        self, settings: user_settings_pb2.UserSettings, *, fields: Sequence[str] = ()
    ) -> user_settings_pb2.UserSettings:
        reply = await self._call(
            self._stub.UpdateUserSettings,
            orchestrator_pb2.UpdateUserSettingsRequest(
                settings=settings,
                update_mask=field_mask_pb2.FieldMask(paths=list(fields)),
                request_id=uuid.uuid4().hex,
            ),
        )
        return reply.settings  # type: ignore[no-any-return]

    async def create_tool_server(
        self,
        tool_server_id: str,
        address: str,
        *,
        description: str = "",
        call_timeout_seconds: float | None = None,
        use_tls: bool = False,
    ) -> orchestrator_pb2.ToolServer:
        """Register a backend implementing ToolService; its tools become available."""
        server = orchestrator_pb2.ToolServer(
            address=address, description=description, use_tls=use_tls
        )
        if call_timeout_seconds is not None:
            server.call_timeout.CopyFrom(duration(call_timeout_seconds))
        reply = await self._call(
            self._stub.CreateToolServer,
            orchestrator_pb2.CreateToolServerRequest(
                tool_server=server, tool_server_id=tool_server_id, request_id=uuid.uuid4().hex
            ),
        )
        return reply.tool_server  # type: ignore[no-any-return]

    async def list_tool_servers(self) -> list[orchestrator_pb2.ToolServer]:
        reply = await self._call(
            self._stub.ListToolServers, orchestrator_pb2.ListToolServersRequest(page_size=1000)
        )
        return list(reply.tool_servers)

    async def delete_tool_server(self, name: str) -> None:
        await self._call(
            self._stub.DeleteToolServer,
            orchestrator_pb2.DeleteToolServerRequest(name=name, request_id=uuid.uuid4().hex),
        )

    async def list_tools(self) -> list[orchestrator_pb2.AvailableTool]:
        reply = await self._call(self._stub.ListTools, orchestrator_pb2.ListToolsRequest())
        return list(reply.tools)

    async def list_models(self) -> list[orchestrator_pb2.Model]:
        reply = await self._call(self._stub.ListModels, orchestrator_pb2.ListModelsRequest())
        return list(reply.models)

    async def provider_status(self) -> list[orchestrator_pb2.ProviderStatus]:
        reply = await self._call(
            self._stub.GetProviderStatus, orchestrator_pb2.GetProviderStatusRequest()
        )
        return list(reply.providers)

    async def usage(
        self,
        *,
        session: str = "",
        group_by: operations_pb2.UsageGrouping.ValueType = (
            operations_pb2.USAGE_GROUPING_UNSPECIFIED
        ),
    ) -> orchestrator_pb2.GetUsageResponse:
        usage: orchestrator_pb2.GetUsageResponse = await self._call(
            self._stub.GetUsage,
            orchestrator_pb2.GetUsageRequest(session=session, group_by=group_by),
        )
        return usage
