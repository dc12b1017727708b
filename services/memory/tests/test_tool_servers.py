"""Tool servers: registered per tenant, with the tools they listed, on both engines."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2

from agentmesh.common.v1 import tools_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_memory.testing import Api, rpc_error, violation_fields


def record(address: str = "127.0.0.1:7000") -> memory_pb2.ToolServerRecord:
    return memory_pb2.ToolServerRecord(
        address=address,
        description="weather and bookings",
        call_timeout=duration_pb2.Duration(seconds=5),
        tools=[
            tools_pb2.ToolSpec(name="weather", permission=tools_pb2.TOOL_PERMISSION_READ_ONLY),
            tools_pb2.ToolSpec(name="book", permission=tools_pb2.TOOL_PERMISSION_READ_WRITE),
        ],
    )


async def test_create_get_list_delete(api: Api) -> None:
    created = await api.CreateToolServer(
        memory_pb2.CreateToolServerRequest(tool_server=record(), tool_server_id="travel")
    )
    stored = created.tool_server
    assert stored.name == "toolServers/travel"
    assert stored.HasField("create_time")
    assert [t.name for t in stored.tools] == ["weather", "book"]
    got = await api.GetToolServer(memory_pb2.GetToolServerRequest(name="toolServers/travel"))
    assert got.tool_server == stored
    await api.CreateToolServer(
        memory_pb2.CreateToolServerRequest(tool_server=record("127.0.0.1:7001"), tool_server_id="b")
    )
    first = await api.ListToolServers(memory_pb2.ListToolServersRequest(page_size=1))
    assert [s.name for s in first.tool_servers] == ["toolServers/travel"]
    second = await api.ListToolServers(
        memory_pb2.ListToolServersRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [s.name for s in second.tool_servers] == ["toolServers/b"]
    assert not second.next_page_token
    await api.DeleteToolServer(memory_pb2.DeleteToolServerRequest(name="toolServers/travel"))
    await rpc_error(
        api.GetToolServer(memory_pb2.GetToolServerRequest(name="toolServers/travel")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_ids_are_unique_per_tenant_and_repeats_are_idempotent(api: Api) -> None:
    request = memory_pb2.CreateToolServerRequest(
        tool_server=record(), tool_server_id="dup", request_id="r-1"
    )
    first = await api.CreateToolServer(request)
    again = await api.CreateToolServer(request)
    assert again.tool_server == first.tool_server
    error = await rpc_error(
        api.CreateToolServer(
            memory_pb2.CreateToolServerRequest(tool_server=record(), tool_server_id="dup")
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert error.reason == "TOOL_SERVER_EXISTS"
    other = api.as_tenant(api.tenant + "-other")
    await other.CreateToolServer(
        memory_pb2.CreateToolServerRequest(tool_server=record(), tool_server_id="dup")
    )
    await rpc_error(
        other.GetToolServer(memory_pb2.GetToolServerRequest(name="toolServers/missing")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_another_tenants_tool_server_is_not_found(api: Api) -> None:
    await api.CreateToolServer(
        memory_pb2.CreateToolServerRequest(tool_server=record(), tool_server_id="mine")
    )
    stranger = api.as_tenant(api.tenant + "-stranger")
    for call in (
        stranger.GetToolServer(memory_pb2.GetToolServerRequest(name="toolServers/mine")),
        stranger.DeleteToolServer(memory_pb2.DeleteToolServerRequest(name="toolServers/mine")),
    ):
        await rpc_error(call, grpc.StatusCode.NOT_FOUND)
    listed = await stranger.ListToolServers(memory_pb2.ListToolServersRequest())
    assert list(listed.tool_servers) == []


async def test_bad_input_names_the_field(api: Api) -> None:
    cases = [
        (
            memory_pb2.CreateToolServerRequest(tool_server=record(), tool_server_id="Bad Id"),
            "tool_server_id",
        ),
        (
            memory_pb2.CreateToolServerRequest(tool_server=record(""), tool_server_id="x"),
            "tool_server.address",
        ),
    ]
    for request, field in cases:
        error = await rpc_error(api.CreateToolServer(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert violation_fields(error) == {field}
    error = await rpc_error(
        api.GetToolServer(memory_pb2.GetToolServerRequest(name="tools/x")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violation_fields(error) == {"name"}
