"""Messages agents address to each other (seed 002's inter-agent messages).

An agent with the built-in `send_message` tool sends text to one or more agents of its
session, as a request, a response or a notification. The message is stored with its author,
recipients and type (with the turn's other writes, in order), and an `agent_message` event
shows who wrote to whom. It does not enter the shared conversation: each recipient finds it
in its next turn's context (`context.py`), and nobody else does.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from google.protobuf import struct_pb2
from google.protobuf.json_format import ParseDict

from agentmesh.common.v1 import events_pb2, messages_pb2, tools_pb2
from agentmesh.memory.v1 import memory_pb2

from .events import EventRecorder
from .tools import READ_WRITE, Tool, ToolCallContext, ToolError

__all__ = ["MESSAGE_TYPES", "SEND_TOOL", "Messenger", "messaging_tools"]

SEND_TOOL = "send_message"
MAX_CONTENT = 8000
MESSAGE_TYPES = {
    "request": messages_pb2.MESSAGE_TYPE_REQUEST,
    "response": messages_pb2.MESSAGE_TYPE_RESPONSE,
    "notification": messages_pb2.MESSAGE_TYPE_NOTIFICATION,
}


class Messenger:
    """Sends one session's addressed messages through its recorder (its only writer)."""

    def __init__(self, recorder: EventRecorder, session: str, members: Sequence[str]) -> None:
        self._recorder = recorder
        self._session = session
        self._members = {m: m for m in members} | {m.rsplit("/", 1)[-1]: m for m in members}

    def resolve(self, recipient: str) -> str:
        """A member's name from its name or id; ToolError for anyone else."""
        found = self._members.get(recipient.strip())
        if found is None:
            known = ", ".join(sorted({m.rsplit("/", 1)[-1] for m in self._members.values()}))
            raise ToolError(
                "INVALID_ARGUMENT",
                f"{recipient!r} is not an agent of this session (agents: {known or 'none'})",
            )
        return found

    async def send(
        self,
        author: str,
        recipients: Sequence[str],
        kind: messages_pb2.MessageType.ValueType,
        content: str,
    ) -> memory_pb2.StoredMessage:
        """Store the message (with the turn's writes) and emit its `agent_message` event."""
        names = list(dict.fromkeys(self.resolve(r) for r in recipients))
        if author in names:
            raise ToolError("INVALID_ARGUMENT", "an agent cannot send a message to itself")
        message = memory_pb2.StoredMessage(
            name=f"{self._session}/messages/{uuid.uuid4().hex}",
            message=messages_pb2.Message(
                role=messages_pb2.ROLE_ASSISTANT,
                content=content,
                name=author.rsplit("/", 1)[-1],
            ),
            agent=author,
            recipients=names,
            type=kind,
        )
        self._recorder.stage_messages([message])
        await self._recorder.emit(
            events_pb2.SessionEvent(
                agent=author,
                agent_message=events_pb2.AgentMessage(
                    message=message.name,
                    from_agent=author,
                    to_agents=names,
                    type=kind,
                    content=content,
                ),
            )
        )
        return message


def messaging_tools() -> dict[str, Tool]:
    """The built-in `send_message` tool."""

    async def send_message(
        context: ToolCallContext, arguments: struct_pb2.Struct
    ) -> struct_pb2.Struct:
        if context.messenger is None:
            raise ToolError("FAILED_PRECONDITION", "messages can only be sent within a session")
        fields = arguments.fields
        raw_to = fields.get("to")
        if raw_to is None:
            recipients: list[str] = []
        elif raw_to.WhichOneof("kind") == "list_value":
            recipients = [v.string_value for v in raw_to.list_value.values if v.string_value]
        else:
            recipients = [raw_to.string_value] if raw_to.string_value else []
        if not recipients:
            raise ToolError("INVALID_ARGUMENT", "to must name at least one agent")
        kind_name = fields["type"].string_value if "type" in fields else "notification"
        if kind_name not in MESSAGE_TYPES:
            raise ToolError("INVALID_ARGUMENT", f"type must be one of {', '.join(MESSAGE_TYPES)}")
        content = fields["content"].string_value if "content" in fields else ""
        if not content.strip() or len(content) > MAX_CONTENT:
            raise ToolError("INVALID_ARGUMENT", f"content must be 1 to {MAX_CONTENT} characters")
        stored = await context.messenger.send(
            context.agent, recipients, MESSAGE_TYPES[kind_name], content
        )
        result = struct_pb2.Struct()
        result.update({"sent_to": list(stored.recipients), "message": stored.name})
        return result

    spec = tools_pb2.ToolSpec(
        name=SEND_TOOL,
        description=(
            "Send a message to other agents of this session; each reads it in its next turn. "
            "type: request (asks for something), response (answers one) or notification."
        ),
        parameters_schema=ParseDict(
            {
                "type": "object",
                "properties": {
                    "to": {
                        "description": "agent name, or a list of agent names",
                        "anyOf": [
                            {"type": "string"},
                            {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        ],
                    },
                    "type": {"enum": list(MESSAGE_TYPES)},
                    "content": {"type": "string", "maxLength": MAX_CONTENT},
                },
                "required": ["to", "content"],
            },
            struct_pb2.Struct(),
        ),
        permission=READ_WRITE,
    )
    return {SEND_TOOL: Tool(spec, send_message)}
