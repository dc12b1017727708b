"""External tools: backends implementing `agentmesh.orchestrator.v1.ToolService`.

A tenant registers a tool server by address. The orchestrator asks the server for its tools
(`ListTools`) at registration, refuses names that clash with a built-in tool or another
server's, and stores the record in the memory service (so every replica sees it). When a
session runs, its tenant's catalog is the built-in tools plus every registered server's; a
call to an external tool is an `InvokeTool` with the server's deadline, and any failure
reaches the model as a tool result naming the status.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import grpc
from google.protobuf import struct_pb2

from agentmesh.common.v1 import tools_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2, tool_service_pb2, tool_service_pb2_grpc
from agentmesh_common import FailedPrecondition, InvalidArgument
from agentmesh_common.protobuf import duration

from .adapters.memory_client import MemoryClient
from .agents import AGENT_ID
from .tools import Tool, ToolCallContext, ToolError

DEFAULT_CALL_TIMEOUT = 30.0
LIST_TIMEOUT = 5.0
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


class ToolCatalog:
    """The tools each tenant's agents may be given, built-in and external."""

    def __init__(self, memory: MemoryClient, builtins: Mapping[str, Tool]) -> None:
        self._memory = memory
        self._builtins = dict(builtins)
        self._channels: dict[tuple[str, bool], grpc.aio.Channel] = {}

    @property
    def builtins(self) -> Mapping[str, Tool]:
        return self._builtins

    async def records(self, tenant: str) -> list[memory_pb2.ToolServerRecord]:
        """Every tool server the tenant registered."""
        found: list[memory_pb2.ToolServerRecord] = []
        token = ""
        while True:
            reply = await self._memory.call(
                tenant,
                self._memory.stub.ListToolServers,
                memory_pb2.ListToolServersRequest(page_size=1000, page_token=token),
            )
            found.extend(reply.tool_servers)
            token = reply.next_page_token
            if not token:
                return found

    async def tools_for(self, tenant: str) -> dict[str, Tool]:
        """Built-in tools plus every registered server's."""
        tools = dict(self._builtins)
        for record in await self.records(tenant):
            for spec in record.tools:
                tools.setdefault(spec.name, self._external(record, spec))
        return tools

    async def register(
        self, tenant: str, request: orchestrator_pb2.CreateToolServerRequest
    ) -> orchestrator_pb2.ToolServer:
        """Ask the server for its tools, check them, and store the registration."""
        server = request.tool_server
        if not AGENT_ID.fullmatch(request.tool_server_id):
            raise InvalidArgument.for_field("tool_server_id", "must match [a-z][a-z0-9-]{0,62}")
        if not server.address.strip():
            raise InvalidArgument.for_field("tool_server.address", "required")
        timeout = (
            server.call_timeout.ToNanoseconds() / 1e9 if server.HasField("call_timeout") else 0
        )
        if timeout < 0 or timeout > 600:
            raise InvalidArgument.for_field(
                "tool_server.call_timeout", "must be between 0 and 600 seconds"
            )
        listed = await self._list_tools(server.address, server.use_tls)
        taken = {
            spec.name: record.name for record in await self.records(tenant) for spec in record.tools
        }
        for i, spec in enumerate(listed):
            if not TOOL_NAME.fullmatch(spec.name):
                raise FailedPrecondition(
                    f"the server lists a tool named {spec.name!r}, not [a-zA-Z0-9_-]{{1,64}}",
                    reason="TOOL_SERVER_INVALID",
                )
            if spec.name in self._builtins or spec.name in taken:
                owner = "a built-in tool" if spec.name in self._builtins else taken[spec.name]
                raise FailedPrecondition(
                    f"tool {spec.name!r} (tools[{i}]) is already provided by {owner}",
                    reason="TOOL_NAME_TAKEN",
                )
        record = memory_pb2.ToolServerRecord(
            address=server.address,
            description=server.description,
            use_tls=server.use_tls,
            tools=listed,
        )
        record.call_timeout.CopyFrom(
            server.call_timeout
            if server.HasField("call_timeout")
            else duration(DEFAULT_CALL_TIMEOUT)
        )
        reply = await self._memory.call(
            tenant,
            self._memory.stub.CreateToolServer,
            memory_pb2.CreateToolServerRequest(
                tool_server=record,
                tool_server_id=request.tool_server_id,
                request_id=request.request_id,
            ),
        )
        return as_public(reply.tool_server)

    async def _list_tools(self, address: str, use_tls: bool) -> list[tools_pb2.ToolSpec]:
        stub = tool_service_pb2_grpc.ToolServiceStub(self._channel(address, use_tls))
        try:
            reply = await stub.ListTools(
                tool_service_pb2.ToolServiceListToolsRequest(page_size=1000), timeout=LIST_TIMEOUT
            )
        except grpc.aio.AioRpcError as exc:
            raise FailedPrecondition(
                f"the tool server at {address} did not list its tools: "
                f"{exc.code().name}: {exc.details()}",
                reason="TOOL_SERVER_UNREACHABLE",
            ) from None
        return list(reply.tools)

    def _channel(self, address: str, use_tls: bool) -> grpc.aio.Channel:
        key = (address, use_tls)
        channel = self._channels.get(key)
        if channel is None:
            channel = (
                grpc.aio.secure_channel(address, grpc.ssl_channel_credentials())
                if use_tls
                else grpc.aio.insecure_channel(address)
            )
            self._channels[key] = channel
        return channel

    def _external(self, record: memory_pb2.ToolServerRecord, spec: tools_pb2.ToolSpec) -> Tool:
        timeout = record.call_timeout.ToNanoseconds() / 1e9 or DEFAULT_CALL_TIMEOUT
        stub = tool_service_pb2_grpc.ToolServiceStub(self._channel(record.address, record.use_tls))

        async def invoke(
            context: ToolCallContext, arguments: struct_pb2.Struct
        ) -> struct_pb2.Struct:
            try:
                reply = await stub.InvokeTool(
                    tool_service_pb2.InvokeToolRequest(
                        tool=spec.name,
                        arguments=arguments,
                        session=context.session,
                        agent=context.agent,
                        request_id=context.tool_call_id,
                        tenant=context.tenant,
                    ),
                    timeout=timeout,
                )
            except grpc.aio.AioRpcError as exc:
                raise ToolError(exc.code().name, exc.details() or exc.code().name) from None
            return reply.result

        # The ToolBox applies its own deadline too; give it a little more than the call's.
        return Tool(spec=spec, handler=invoke, timeout_seconds=timeout + 1.0)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()


def as_public(record: memory_pb2.ToolServerRecord) -> orchestrator_pb2.ToolServer:
    """The stored record as the public `ToolServer`."""
    return orchestrator_pb2.ToolServer(
        name=record.name,
        address=record.address,
        description=record.description,
        call_timeout=record.call_timeout,
        use_tls=record.use_tls,
        tools=record.tools,
        create_time=record.create_time,
    )
