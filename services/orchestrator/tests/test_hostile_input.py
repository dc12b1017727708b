"""What a fuzzer sent the public API (issue 16, finding 4) and got UNKNOWN, INTERNAL or a silent
OK for: each is now INVALID_ARGUMENT naming the field, before anything is stored."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from agentmesh.common.v1 import agents_pb2, memory_entries_pb2
from agentmesh.orchestrator.v1 import orchestrator_pb2
from agentmesh_common import InvalidArgument, from_rpc_error

from .api_mesh import Mesh, agent

SERVICE = "/agentmesh.orchestrator.v1.OrchestratorService/"


async def _raw(mesh: Mesh, method: str, body: bytes) -> tuple[grpc.StatusCode, list[str]]:
    """Send `body` as the request of `method`; the status code and the violated fields."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mesh.orchestrator.port}")
    try:
        call: Callable[..., Any] = channel.unary_unary(SERVICE + method)
        await call(body, metadata=(("authorization", f"Bearer {mesh.keys['acme']}"),), timeout=10)
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)  # the client's decoding of grpc-status-details-bin
        return exc.code(), [v.field for v in getattr(error, "violations", ())]
    finally:
        await channel.close()
    return grpc.StatusCode.OK, []


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field, encoded by hand (the library will not build what it cannot
    parse back)."""
    length, size = b"", len(payload)
    while True:
        byte, size = size & 0x7F, size >> 7
        length += bytes([byte | (0x80 if size else 0)])
        if not size:
            return bytes([number << 3 | 2]) + length + payload


def _deep_memory(levels: int = 150) -> bytes:
    """PutMemory with a Value of Structs nested `levels` deep: {"a": {"a": ...}}."""
    value = _field(3, b"deep")  # Value.string_value
    for _ in range(levels):
        entry = _field(1, b"a") + _field(2, value)  # Struct.fields entry: key, Value
        value = _field(5, _field(1, entry))  # Value.struct_value
    name = _field(1, b"agents/a/users/u/memories/k")
    return _field(1, name + _field(3, value))  # PutMemoryRequest.entry: name, value


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("CreateSession", b"\xff\xff\xff\xff\x0f"),  # not protobuf at all
        ("GetSession", b"\x0a\x02\xff\xfe"),  # name: invalid UTF-8
        ("PutMemory", _deep_memory()),  # a Struct nested deeper than the parser's limit
    ],
    ids=["corrupt", "invalid-utf8", "nested-struct"],
)
async def test_undecodable_requests_are_invalid_argument(
    mesh: Mesh, method: str, body: bytes
) -> None:
    code, fields = await _raw(mesh, method, body)
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request"])


def _execute_timeout(seconds: int) -> Message:
    return orchestrator_pb2.ExecuteRequest(task="t", timeout=duration_pb2.Duration(seconds=seconds))


def _execute_context(number: float) -> Message:
    request = orchestrator_pb2.ExecuteRequest(task="t")
    request.context.update({"x": 1})
    request.context.fields["x"].number_value = number
    return request


def _memory_value(number: float) -> Message:
    entry = memory_entries_pb2.MemoryEntry(name="agents/a/users/u/memories/k")
    entry.value.number_value = number
    return orchestrator_pb2.PutMemoryRequest(entry=entry)


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Execute", _execute_timeout(10**12), "timeout"),
        ("Execute", _execute_context(math.inf), "context.x"),
        ("Execute", _execute_context(math.nan), "context.x"),
        ("PutMemory", _memory_value(math.nan), "entry.value"),
        (
            "GetUsage",
            orchestrator_pb2.GetUsageRequest(start_time=timestamp_pb2.Timestamp(nanos=-1)),
            "start_time",
        ),
        (
            "GetUsage",  # year 10000
            orchestrator_pb2.GetUsageRequest(
                end_time=timestamp_pb2.Timestamp(seconds=253_402_300_800)
            ),
            "end_time",
        ),
        (
            "PutMemory",
            orchestrator_pb2.PutMemoryRequest(
                entry=memory_entries_pb2.MemoryEntry(name="agents/a/users/u/memories/k"),
                ttl=duration_pb2.Duration(seconds=1, nanos=-5),
            ),
            "ttl",
        ),
        (
            "SendMessage",
            orchestrator_pb2.SendMessageRequest(session="sessions/x", content="hi", policy=99),  # type: ignore[arg-type]
            "policy",
        ),
        (
            "CreateAgent",
            orchestrator_pb2.CreateAgentRequest(
                agent_id="a",
                agent=agents_pb2.AgentDefinition(type=42),  # type: ignore[arg-type]
            ),
            "agent.type",
        ),
        ("ListTools", orchestrator_pb2.ListToolsRequest(page_size=-1), "page_size"),
        ("ListTools", orchestrator_pb2.ListToolsRequest(page_size=5000), "page_size"),
        ("ListTools", orchestrator_pb2.ListToolsRequest(page_token="bogus"), "page_token"),
        ("ListModels", orchestrator_pb2.ListModelsRequest(page_size=-1), "page_size"),
        ("ListModels", orchestrator_pb2.ListModelsRequest(page_token="bogus"), "page_token"),
        ("Execute", _execute_timeout(100 * 86_400), "timeout"),  # a valid Duration, too long
    ],
)
async def test_unusable_values_name_their_field(
    mesh: Mesh, method: str, request_: Message, field: str
) -> None:
    code, fields = await _raw(mesh, method, request_.SerializeToString())
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_update_mask_star_replaces_and_unknown_paths_are_named(mesh: Mesh) -> None:
    async with mesh.client() as client:
        created = await client.create_agent("alice", agent("alice", tools=["calculator"]))
        replacement = agent("alice")
        replacement.name = created.name
        replacement.description = "replaced"
        star = await client._call(
            client._stub.UpdateAgent,
            orchestrator_pb2.UpdateAgentRequest(
                agent=replacement, update_mask=field_mask_pb2.FieldMask(paths=["*"])
            ),
        )
        assert star.agent.description == "replaced"
        assert list(star.agent.tools) == [], "'*' replaces every field"
        for paths, at in (
            (["description", "nope"], "update_mask.paths[1]"),
            ([""], "update_mask.paths[0]"),
        ):
            with pytest.raises(InvalidArgument) as caught:
                await client._call(
                    client._stub.UpdateAgent,
                    orchestrator_pb2.UpdateAgentRequest(
                        agent=replacement, update_mask=field_mask_pb2.FieldMask(paths=paths)
                    ),
                )
            assert [v.field for v in caught.value.violations] == [at]


async def test_tools_are_listed_page_by_page(mesh: Mesh) -> None:
    async with mesh.client() as client:
        everything = await client._call(client._stub.ListTools, orchestrator_pb2.ListToolsRequest())
        assert not everything.next_page_token
        seen: list[str] = []
        token = ""
        while True:
            reply = await client._call(
                client._stub.ListTools,
                orchestrator_pb2.ListToolsRequest(page_size=2, page_token=token),
            )
            assert len(reply.tools) <= 2
            seen += [t.spec.name for t in reply.tools]
            token = reply.next_page_token
            if not token:
                break
    assert len(everything.tools) > 2
    assert seen == [t.spec.name for t in everything.tools], "every tool once, in order"
