"""The port every provider adapter implements, and helpers they share."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.context import Context

from agentmesh_gateway.domain import ChatMessage, GenerateCall, ProviderEvent, Role, ToolChoice
from agentmesh_gateway.errors import ErrorKind, UpstreamError
from agentmesh_gateway.limits import ProviderLimits


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt goes: the deployment's model, URL, headers, one key, timeout."""

    provider: str
    model: str
    base_url: str
    timeout: float
    api_key: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    stream: bool = True  # False: one non-streaming request, replayed as events
    # The attempt's span (upstream requests are its children) and where the provider's
    # rate-limit headers are reported.
    trace_context: Context | None = field(default=None, repr=False)
    observe_limits: Callable[[ProviderLimits], None] | None = field(default=None, repr=False)


class ProviderAdapter(Protocol):
    """Speaks one provider's wire format and yields normalized events.

    ``stream`` ends with exactly one :class:`StreamEnd`, or raises :class:`UpstreamError`
    (also for a stream that ends without the provider's terminator).
    """

    name: str
    supports_response_schema: bool

    def stream(self, call: GenerateCall, target: Target) -> AsyncGenerator[ProviderEvent, None]: ...

    async def aclose(self) -> None: ...


def reject(message: str) -> UpstreamError:
    """A request this provider refuses; not retryable."""
    return UpstreamError(ErrorKind.BAD_REQUEST, message)


def check_stop(call: GenerateCall, provider: str, limit: int) -> None:
    if len(call.config.stop) > limit:
        raise reject(f"{provider} accepts at most {limit} stop sequences")


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """The system text used where a provider cannot enforce a JSON schema natively."""
    return (
        "Reply with only one JSON value, no prose and no code fences, that validates "
        "against this JSON schema:\n" + json.dumps(schema, separators=(",", ":"))
    )


def openai_messages(call: GenerateCall, *, with_names: bool = True) -> list[dict[str, Any]]:
    """Messages in OpenAI Chat Completions form (tool arguments as JSON strings)."""
    out: list[dict[str, Any]] = []
    for message in call.messages:
        item: dict[str, Any] = {"role": message.role.value, "content": message.content}
        if with_names and message.name and message.role is not Role.TOOL:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": tc.id,
                    "type": "function",
                    "function": {"name": tc.name, "arguments": json.dumps(tc.arguments)},
                }
                for tc in message.tool_calls
            ]
            if not message.content:
                item["content"] = None
        if message.role is Role.TOOL:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def openai_tools(call: GenerateCall) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters) or {"type": "object", "properties": {}},
            },
        }
        for tool in call.tools
    ]


def openai_tool_choice(choice: ToolChoice) -> str:
    return {ToolChoice.AUTO: "auto", ToolChoice.NONE: "none", ToolChoice.REQUIRED: "required"}[
        choice
    ]


def system_text(messages: tuple[ChatMessage, ...]) -> str:
    return "\n\n".join(m.content for m in messages if m.role is Role.SYSTEM and m.content)
