"""Tools agents may call: the built-in ones here, external ones through `ToolService` servers.

A tool has a permission (READ_ONLY or READ_WRITE). An agent is offered only the tools its
definition names and its situation allows (executors inside a plan get READ_ONLY tools only).
A call to anything else is refused before anything runs; the refusal, like any tool error,
reaches the model as a tool result, never as a crash of the session.
"""

from __future__ import annotations

import ast
import asyncio
import datetime as dt
import json
import math
import operator
import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict, ParseDict

from agentmesh.common.v1 import (
    agents_pb2,
    knowledge_pb2,
    memory_entries_pb2,
    messages_pb2,
    tools_pb2,
)
from agentmesh_common import AgentmeshError

if TYPE_CHECKING:
    from .messaging import Messenger
    from .preferences import SessionScope

READ_ONLY = tools_pb2.TOOL_PERMISSION_READ_ONLY
READ_WRITE = tools_pb2.TOOL_PERMISSION_READ_WRITE

ToolHandler = Callable[["ToolCallContext", struct_pb2.Struct], Awaitable[struct_pb2.Struct]]


class ToolError(Exception):
    """A tool failed; `code` is a google.rpc.Code name such as PERMISSION_DENIED."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def tool_error_of(error: AgentmeshError) -> ToolError:
    """A domain error of a service a tool called, as the tool's failure (the model reads it)."""
    for cls in type(error).__mro__:
        if cls.__module__ == AgentmeshError.__module__ and cls is not AgentmeshError:
            code = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()
            return ToolError(code, error.message)
    return ToolError("INTERNAL", error.message)


@dataclass(frozen=True)
class ToolCallContext:
    """Who is calling a tool."""

    tenant: str
    session: str
    agent: str
    tool_call_id: str
    user: str = "default"
    # The session's user, preferences and searchable documents (None outside a session run).
    scope: SessionScope | None = None
    # Delivers messages to the session's other agents (send_message).
    messenger: Messenger | None = None


@dataclass(frozen=True)
class Tool:
    """A callable tool and its spec."""

    spec: tools_pb2.ToolSpec
    handler: ToolHandler
    timeout_seconds: float = 30.0
    # The passages a result cites (search_documents), for events and the final answer.
    cite: Callable[[struct_pb2.Struct], list[knowledge_pb2.Citation]] | None = None


def _schema(properties: Mapping[str, object], required: Collection[str]) -> struct_pb2.Struct:
    document = {"type": "object", "properties": dict(properties), "required": list(required)}
    return ParseDict(document, struct_pb2.Struct())


def _result(**values: str | float) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: Mapping[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}
_FUNCTIONS: Mapping[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def evaluate_arithmetic(expression: str) -> float:
    """Evaluate arithmetic safely (numbers, + - * / // % **, a few math functions)."""
    if len(expression) > 500:
        raise ToolError("INVALID_ARGUMENT", "expression longer than 500 characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError("INVALID_ARGUMENT", f"not an arithmetic expression: {exc.msg}") from None

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name) and node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ToolError("INVALID_ARGUMENT", "exponent too large")
            return float(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return float(_UNARY[type(node.op)](walk(node.operand)))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            return float(_FUNCTIONS[node.func.id](*(walk(arg) for arg in node.args)))
        raise ToolError("INVALID_ARGUMENT", f"unsupported element {type(node).__name__}")

    try:
        return walk(tree)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ToolError("INVALID_ARGUMENT", f"cannot evaluate: {exc}") from None


async def _calculator(_: ToolCallContext, arguments: struct_pb2.Struct) -> struct_pb2.Struct:
    expression = arguments.fields["expression"].string_value
    value = evaluate_arithmetic(expression)
    return _result(expression=expression, value=value)


async def _current_time(_: ToolCallContext, arguments: struct_pb2.Struct) -> struct_pb2.Struct:
    now = dt.datetime.now(dt.UTC)
    return _result(utc=now.isoformat(timespec="seconds"), unix_seconds=math.floor(now.timestamp()))


def builtin_tools() -> dict[str, Tool]:
    """The tools every agentmesh has, by name (memory tools are added by the app)."""
    return {
        "calculator": Tool(
            tools_pb2.ToolSpec(
                name="calculator",
                description="Evaluate an arithmetic expression, e.g. '2 * (3 + 4) / sqrt(2)'.",
                parameters_schema=_schema(
                    {"expression": {"type": "string", "description": "the expression"}},
                    ["expression"],
                ),
                permission=READ_ONLY,
            ),
            _calculator,
        ),
        "current_time": Tool(
            tools_pb2.ToolSpec(
                name="current_time",
                description="The current date and time in UTC.",
                parameters_schema=_schema({}, []),
                permission=READ_ONLY,
            ),
            _current_time,
        ),
    }


class ToolBox:
    """The tools one agent may use in one situation, and the only way to call them."""

    def __init__(
        self,
        tools: Mapping[str, Tool],
        allowed: Collection[str],
        *,
        read_only: bool,
        approval: agents_pb2.ToolApproval.ValueType = agents_pb2.TOOL_APPROVAL_UNSPECIFIED,
    ):
        self._tools = tools
        self._approval = approval
        self._allowed = frozenset(
            name
            for name in allowed
            if name in tools and (not read_only or tools[name].spec.permission == READ_ONLY)
        )

    def needs_approval(self, name: str) -> bool:
        """Whether a call of `name` waits for a human's approval: the tool requires it, or
        the agent's policy covers it (every call, or every call of a READ_WRITE tool; an
        unset permission counts as READ_WRITE). A call that is not allowed never does: it
        is refused without asking anyone."""
        if name not in self._allowed:
            return False
        spec = self._tools[name].spec
        if spec.requires_approval or self._approval == agents_pb2.TOOL_APPROVAL_ALL:
            return True
        return self._approval == agents_pb2.TOOL_APPROVAL_READ_WRITE and (
            spec.permission != READ_ONLY
        )

    def permission(self, name: str) -> tools_pb2.ToolPermission.ValueType:
        """The permission of tool `name` (UNSPECIFIED for one that is not here)."""
        tool = self._tools.get(name)
        return tool.spec.permission if tool is not None else tools_pb2.TOOL_PERMISSION_UNSPECIFIED

    @property
    def specs(self) -> list[tools_pb2.ToolSpec]:
        """What the model is offered."""
        return [self._tools[name].spec for name in sorted(self._allowed)]

    def citations(self, name: str, result: struct_pb2.Struct) -> list[knowledge_pb2.Citation]:
        """What a result of tool `name` cites (nothing for most tools)."""
        tool = self._tools.get(name)
        return tool.cite(result) if tool is not None and tool.cite is not None else []

    async def call(
        self, context: ToolCallContext, call: messages_pb2.ToolCall
    ) -> struct_pb2.Struct:
        """Run an allowed tool with its deadline; raise `ToolError` otherwise."""
        if call.name not in self._allowed:
            raise ToolError(
                "PERMISSION_DENIED", f"tool {call.name!r} is not available to this agent"
            )
        tool = self._tools[call.name]
        try:
            async with asyncio.timeout(tool.timeout_seconds):
                return await tool.handler(context, call.arguments)
        except TimeoutError:
            raise ToolError(
                "DEADLINE_EXCEEDED", f"tool {call.name!r} took longer than {tool.timeout_seconds}s"
            ) from None


def struct_to_json_text(value: struct_pb2.Struct) -> str:
    """A tool result as the JSON text a model reads."""
    return json.dumps(MessageToDict(value), separators=(",", ":"), sort_keys=True)


def json_to_struct(value: Mapping[str, object]) -> struct_pb2.Struct:
    """A JSON object as a Struct."""
    return ParseDict(dict(value), struct_pb2.Struct())


class MemoryToolStore(Protocol):
    """The agent-memory calls the memory tools make (the memory service)."""

    async def get_memory(self, tenant: str, name: str) -> memory_entries_pb2.MemoryEntry | None:
        """The entry, or None when there is none (or it expired)."""
        ...

    async def put_memory(
        self, tenant: str, entry: memory_entries_pb2.MemoryEntry, ttl_seconds: float | None
    ) -> memory_entries_pb2.MemoryEntry:
        """Insert or replace an entry."""
        ...


NOTES_AGENT = "session-notes"
# Tools whose memory belongs to a stored agent (inline agents may not use them).
MEMORY_TOOLS = frozenset({"memory_read", "memory_write"})
_KEY_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$", "description": "the key"}
_MEMORY_TYPES = {
    "short_term": agents_pb2.MEMORY_TYPE_SHORT_TERM,
    "long_term": agents_pb2.MEMORY_TYPE_LONG_TERM,
    "episodic": agents_pb2.MEMORY_TYPE_EPISODIC,
}


def _memory_name(agent: str, user: str, key: str) -> str:
    agent_id = agent.rsplit("/", 1)[-1]
    return f"agents/{agent_id}/users/{user}/memories/{key}"


def _key(arguments: struct_pb2.Struct) -> str:
    key = arguments.fields["key"].string_value if "key" in arguments.fields else ""
    if not key or len(key) > 128 or not all(c.isalnum() or c in "_.-" for c in key):
        raise ToolError("INVALID_ARGUMENT", "key must be 1-128 characters of A-Z a-z 0-9 _ . -")
    return key


def memory_tools(store: MemoryToolStore) -> dict[str, Tool]:
    """Agent memory and shared session notes, kept by the memory service."""

    async def memory_read(
        context: ToolCallContext, arguments: struct_pb2.Struct
    ) -> struct_pb2.Struct:
        name = _memory_name(context.agent, context.user, _key(arguments))
        try:
            entry = await store.get_memory(context.tenant, name)
        except AgentmeshError as error:  # e.g. an inline agent: memory needs a stored agent
            raise tool_error_of(error) from None
        result = struct_pb2.Struct()
        result.fields["found"].bool_value = entry is not None
        if entry is not None:
            result.fields["value"].CopyFrom(entry.value)
        return result

    async def memory_write(
        context: ToolCallContext, arguments: struct_pb2.Struct
    ) -> struct_pb2.Struct:
        key = _key(arguments)
        kind = arguments.fields["type"].string_value if "type" in arguments.fields else "long_term"
        if kind not in _MEMORY_TYPES:
            raise ToolError("INVALID_ARGUMENT", f"type must be one of {', '.join(_MEMORY_TYPES)}")
        ttl = (
            arguments.fields["ttl_seconds"].number_value
            if "ttl_seconds" in arguments.fields
            else None
        )
        if ttl is not None and ttl <= 0:
            raise ToolError("INVALID_ARGUMENT", "ttl_seconds must be positive")
        entry = memory_entries_pb2.MemoryEntry(
            name=_memory_name(context.agent, context.user, key), type=_MEMORY_TYPES[kind]
        )
        entry.value.CopyFrom(arguments.fields["value"])
        try:
            await store.put_memory(context.tenant, entry, ttl)
        except AgentmeshError as error:  # e.g. an inline agent: memory needs a stored agent
            raise tool_error_of(error) from None
        return _result(stored=key)

    async def notes_read(
        context: ToolCallContext, arguments: struct_pb2.Struct
    ) -> struct_pb2.Struct:
        session_id = context.session.rsplit("/", 1)[-1]
        entry = await store.get_memory(
            context.tenant, _memory_name(NOTES_AGENT, session_id, "notes")
        )
        return _result(notes=entry.value.string_value if entry is not None else "")

    async def notes_write(
        context: ToolCallContext, arguments: struct_pb2.Struct
    ) -> struct_pb2.Struct:
        session_id = context.session.rsplit("/", 1)[-1]
        name = _memory_name(NOTES_AGENT, session_id, "notes")
        previous = await store.get_memory(context.tenant, name)
        text = arguments.fields["text"].string_value
        notes = f"{previous.value.string_value}\n{text}".strip() if previous is not None else text
        if len(notes) > 20_000:
            raise ToolError("RESOURCE_EXHAUSTED", "session notes are limited to 20000 characters")
        entry = memory_entries_pb2.MemoryEntry(name=name, type=agents_pb2.MEMORY_TYPE_EPISODIC)
        entry.value.string_value = notes
        await store.put_memory(context.tenant, entry, None)
        return _result(notes_chars=len(notes))

    return {
        "memory_read": Tool(
            tools_pb2.ToolSpec(
                name="memory_read",
                description="Read a value you remembered earlier for this user, by key.",
                parameters_schema=_schema({"key": _KEY_SCHEMA}, ["key"]),
                permission=READ_ONLY,
            ),
            memory_read,
        ),
        "memory_write": Tool(
            tools_pb2.ToolSpec(
                name="memory_write",
                description="Remember a JSON value for this user under a key.",
                parameters_schema=_schema(
                    {
                        "key": _KEY_SCHEMA,
                        "value": {"description": "any JSON value"},
                        "type": {"enum": list(_MEMORY_TYPES)},
                        "ttl_seconds": {"type": "number", "exclusiveMinimum": 0},
                    },
                    ["key", "value"],
                ),
                permission=READ_WRITE,
            ),
            memory_write,
        ),
        "session_notes_read": Tool(
            tools_pb2.ToolSpec(
                name="session_notes_read",
                description="Read the notes every agent of this session shares.",
                parameters_schema=_schema({}, []),
                permission=READ_ONLY,
            ),
            notes_read,
        ),
        "session_notes_write": Tool(
            tools_pb2.ToolSpec(
                name="session_notes_write",
                description="Append a line to the notes every agent of this session shares.",
                parameters_schema=_schema(
                    {"text": {"type": "string", "maxLength": 4000}}, ["text"]
                ),
                permission=READ_WRITE,
            ),
            notes_write,
        ),
    }
