"""Built-in tools: arithmetic, memory and notes, permissions and deadlines."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import struct_pb2

from agentmesh.common.v1 import messages_pb2, tools_pb2
from agentmesh_orchestrator.testing import InMemoryMemoryTools
from agentmesh_orchestrator.tools import (
    Tool,
    ToolBox,
    ToolCallContext,
    ToolError,
    builtin_tools,
    evaluate_arithmetic,
    memory_tools,
)

CONTEXT = ToolCallContext(
    tenant="t", session="sessions/s1", agent="agents/alice", tool_call_id="c1", user="u1"
)


def call(name: str, **arguments: object) -> messages_pb2.ToolCall:
    args = struct_pb2.Struct()
    args.update(arguments)
    return messages_pb2.ToolCall(id="c1", name=name, arguments=args)


@pytest.mark.parametrize(
    ("expression", "value"),
    [("2 * (3 + 4)", 14.0), ("-2 ** 2", -4.0), ("sqrt(16) + pi - pi", 4.0), ("7 // 2 % 3", 0.0)],
)
def test_calculator_evaluates_arithmetic(expression: str, value: float) -> None:
    assert evaluate_arithmetic(expression) == value


@pytest.mark.parametrize(
    "expression", ["__import__('os')", "open('x')", "1/0", "9 ** 99999", "x + 1", "[1][0]"]
)
def test_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ToolError) as caught:
        evaluate_arithmetic(expression)
    assert caught.value.code == "INVALID_ARGUMENT"


async def test_memory_tools_write_then_read_per_agent_and_user() -> None:
    store = InMemoryMemoryTools()
    tools = memory_tools(store)
    box = ToolBox(tools, ["memory_read", "memory_write"], read_only=False)
    await box.call(CONTEXT, call("memory_write", key="favourite", value={"color": "teal"}))
    found = await box.call(CONTEXT, call("memory_read", key="favourite"))
    assert found.fields["found"].bool_value
    assert found.fields["value"].struct_value.fields["color"].string_value == "teal"
    assert next(iter(store.entries))[0] == "t"
    assert next(iter(store.entries))[1] == "agents/alice/users/u1/memories/favourite"
    other_user = ToolCallContext(**{**CONTEXT.__dict__, "user": "u2"})
    missing = await box.call(other_user, call("memory_read", key="favourite"))
    assert not missing.fields["found"].bool_value


async def test_session_notes_are_shared_and_appended() -> None:
    tools = memory_tools(InMemoryMemoryTools())
    box = ToolBox(tools, ["session_notes_read", "session_notes_write"], read_only=False)
    await box.call(CONTEXT, call("session_notes_write", text="first"))
    bob = ToolCallContext(**{**CONTEXT.__dict__, "agent": "agents/bob"})
    await box.call(bob, call("session_notes_write", text="second"))
    notes = await box.call(CONTEXT, call("session_notes_read"))
    assert notes.fields["notes"].string_value == "first\nsecond"


async def test_read_only_toolbox_hides_and_refuses_write_tools() -> None:
    tools = builtin_tools() | memory_tools(InMemoryMemoryTools())
    box = ToolBox(tools, ["calculator", "memory_write", "memory_read"], read_only=True)
    assert [spec.name for spec in box.specs] == ["calculator", "memory_read"]
    with pytest.raises(ToolError) as caught:
        await box.call(CONTEXT, call("memory_write", key="k", value=1))
    assert caught.value.code == "PERMISSION_DENIED"


async def test_a_tool_that_hangs_is_cut_off_at_its_deadline() -> None:
    async def hang(context: ToolCallContext, arguments: struct_pb2.Struct) -> struct_pb2.Struct:
        await asyncio.sleep(10)
        return struct_pb2.Struct()

    slow = Tool(
        tools_pb2.ToolSpec(name="slow", permission=tools_pb2.TOOL_PERMISSION_READ_ONLY),
        hang,
        timeout_seconds=0.05,
    )
    box = ToolBox({"slow": slow}, ["slow"], read_only=True)
    with pytest.raises(ToolError) as caught:
        await box.call(CONTEXT, call("slow"))
    assert caught.value.code == "DEADLINE_EXCEEDED"


async def test_memory_write_validates_its_arguments() -> None:
    box = ToolBox(memory_tools(InMemoryMemoryTools()), ["memory_write"], read_only=False)
    with pytest.raises(ToolError, match="key must be"):
        await box.call(CONTEXT, call("memory_write", key="bad key!", value=1))
    with pytest.raises(ToolError, match="type must be"):
        await box.call(CONTEXT, call("memory_write", key="k", value=1, type="forever"))
