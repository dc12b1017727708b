"""Anthropic's Messages API over the gateway: ``POST /v1/messages`` (streaming and not).

The ``model`` field names a route. Supported: ``system`` (text or text blocks), text,
``tool_use`` and ``tool_result`` blocks, ``tools`` with ``tool_choice`` (auto, any, tool, none),
``max_tokens`` (required, as at Anthropic), ``temperature``, ``top_p``, ``stop_sequences``.
Streams use Anthropic's named events (``message_start`` … ``message_stop``); a failure after
output ends the stream with ``event: error`` (no ``message_stop``), as Anthropic does.
"""

from __future__ import annotations

import json
import uuid
from contextlib import aclosing
from typing import Any

from aiohttp import web

from agentmesh_common import AgentmeshError, InvalidArgument

from .domain import (
    ChatMessage,
    Finished,
    FinishReason,
    GenerateCall,
    GenerationConfig,
    MidStreamPolicy,
    Role,
    TextDelta,
    ThinkingDelta,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
)
from .http_api import (
    Api,
    HttpContext,
    cache_mode_from,
    error_body,
    error_response,
    json_object,
    opt_bool,
    opt_int,
    opt_number,
    read_json,
    text_parts,
)
from .streaming import coalesced
from .tokens import count_messages

STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}
PARAMS = {
    "config.temperature": "temperature",
    "config.top_p": "top_p",
    "config.max_tokens": "max_tokens",
    "config.stop": "stop_sequences",
}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _blocks(value: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise InvalidArgument.for_field(where, "must be a string or a list of content blocks")
    return [json_object(block, f"{where}[{i}]") for i, block in enumerate(value)]


def messages_from(body: dict[str, Any]) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    system = body.get("system")
    if system:
        out.append(ChatMessage(Role.SYSTEM, text_parts(system, "system")))
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument.for_field("messages", "at least one message is required")
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        message = json_object(item, where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidArgument.for_field(f"{where}.role", "must be user or assistant")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for b, block in enumerate(_blocks(message.get("content"), f"{where}.content")):
            kind = block.get("type")
            if kind == "text":
                texts.append(str(block.get("text") or ""))
            elif kind == "tool_use" and role == "assistant":
                calls.append(
                    ToolCall(
                        str(block.get("id") or f"toolu_{b}"),
                        str(block.get("name") or ""),
                        json_object(block.get("input") or {}, f"{where}.content[{b}].input"),
                    )
                )
            elif kind == "tool_result" and role == "user":
                # Each tool result is its own tool message, as the gateway's providers expect.
                content = text_parts(block.get("content"), f"{where}.content[{b}].content")
                out.append(
                    ChatMessage(
                        Role.TOOL, content, tool_call_id=str(block.get("tool_use_id") or "")
                    )
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning is not sent back to other providers
            else:
                raise InvalidArgument.for_field(
                    f"{where}.content[{b}].type", f"{kind!r} blocks are not supported"
                )
        if texts or calls:
            chat_role = Role.USER if role == "user" else Role.ASSISTANT
            out.append(ChatMessage(chat_role, "".join(texts), tool_calls=tuple(calls)))
    return tuple(out)


def tools_from(body: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise InvalidArgument.for_field("tools", "must be a list")
    tools: list[ToolSpec] = []
    for index, item in enumerate(raw):
        tool = json_object(item, f"tools[{index}]")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument.for_field(f"tools[{index}].name", "must be a non-empty string")
        schema = json_object(tool.get("input_schema") or {}, f"tools[{index}].input_schema")
        tools.append(ToolSpec(name, str(tool.get("description") or ""), schema))
    choice = body.get("tool_choice")
    if choice is None:
        return tuple(tools), ToolChoice.AUTO
    kind = json_object(choice, "tool_choice").get("type")
    if kind == "auto":
        return tuple(tools), ToolChoice.AUTO
    if kind == "none":
        return tuple(tools), ToolChoice.NONE
    if kind == "any":
        return tuple(tools), ToolChoice.REQUIRED
    if kind == "tool":
        named = [t for t in tools if t.name == choice.get("name")]
        if not named:
            raise InvalidArgument.for_field("tool_choice.name", "names no tool in tools")
        return tuple(named), ToolChoice.REQUIRED
    raise InvalidArgument.for_field("tool_choice.type", "must be auto, any, tool or none")


def call_from(body: dict[str, Any], tenant: str, request: web.Request) -> GenerateCall:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument.for_field("model", "must name a route (GET /v1/models lists them)")
    max_tokens = opt_int(body, "max_tokens")
    if max_tokens is None:
        raise InvalidArgument.for_field("max_tokens", "is required")
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidArgument.for_field("stop_sequences", "must be a list of strings")
    tools, tool_choice = tools_from(body)
    return GenerateCall(
        messages=messages_from(body),
        route=model,
        tools=tools,
        tool_choice=tool_choice,
        config=GenerationConfig(
            temperature=opt_number(body, "temperature"),
            max_tokens=max_tokens,
            top_p=opt_number(body, "top_p"),
            stop=tuple(stops),
        ),
        tenant=tenant,
        mid_stream=MidStreamPolicy.ERROR if opt_bool(body, "stream") else MidStreamPolicy.RESTART,
        fail_fast_on_rate_limit=True,
        cache=cache_mode_from(request, body),
    )


def _usage(done: Finished) -> dict[str, int]:
    usage = done.usage
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_prompt_tokens,
        "cache_read_input_tokens": usage.cached_prompt_tokens,
        "output_tokens": usage.completion_tokens,
    }


def message_json(done: Finished, route: str, message_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if done.text:
        content.append({"type": "text", "text": done.text})
    content.extend(
        {"type": "tool_use", "id": tc.id, "name": tc.name, "input": dict(tc.arguments)}
        for tc in done.tool_calls
    )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": route,
        "content": content,
        "stop_reason": STOP_REASONS[done.finish_reason],
        "stop_sequence": None,
        "usage": _usage(done),
        "agentmesh": {"cached": done.cached, "deployment": done.deployment},
    }


def _event(name: str, payload: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n"


class _Blocks:
    """Content blocks of a streamed message: a new block when the kind (or tool) changes."""

    def __init__(self) -> None:
        self.index = -1
        self.open: tuple[str, int] | None = None  # (kind, tool index)

    def switch(self, kind: str, tool: int, start: dict[str, Any], out: list[str]) -> None:
        if self.open == (kind, tool):
            return
        self.close(out)
        self.index += 1
        self.open = (kind, tool)
        out.append(
            _event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": start},
            )
        )

    def close(self, out: list[str]) -> None:
        if self.open is not None:
            out.append(
                _event("content_block_stop", {"type": "content_block_stop", "index": self.index})
            )
            self.open = None


class AnthropicHandlers:
    def __init__(self, context: HttpContext) -> None:
        self._context = context

    async def messages(self, request: web.Request) -> web.StreamResponse:
        tenant = await self._context.tenant(request)
        body = await read_json(request)
        try:
            call = call_from(body, tenant, request)
        except InvalidArgument as exc:
            return error_response(Api.ANTHROPIC, exc, PARAMS)
        message_id = f"msg_{uuid.uuid4().hex[:24]}"
        if call.mid_stream is MidStreamPolicy.ERROR:
            return await self._stream(request, call, message_id)
        done: Finished | None = None
        try:
            async with aclosing(self._context.run(call).events()) as events:
                async for event in events:
                    if type(event) is Finished:
                        done = event
        except AgentmeshError as exc:
            return error_response(Api.ANTHROPIC, exc, PARAMS)
        assert done is not None
        return web.json_response(message_json(done, call.route, message_id))

    async def _stream(
        self, request: web.Request, call: GenerateCall, message_id: str
    ) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        blocks = _Blocks()
        started = False
        try:
            async with aclosing(coalesced(self._context.run(call).events())) as batches:
                async for batch in batches:
                    out: list[str] = []
                    for event in batch:
                        kind = type(event)
                        if kind not in (TextDelta, ThinkingDelta, ToolCallDelta, Finished):
                            continue  # attempt bookkeeping stays inside the gateway
                        if not started:
                            started = True
                            out.append(self._message_start(call, message_id))
                        if kind is TextDelta:
                            blocks.switch("text", 0, {"type": "text", "text": ""}, out)
                            delta: dict[str, Any] = {"type": "text_delta", "text": event.text}  # type: ignore[union-attr]
                        elif kind is ThinkingDelta:
                            blocks.switch("thinking", 0, {"type": "thinking", "thinking": ""}, out)
                            delta = {"type": "thinking_delta", "thinking": event.text}  # type: ignore[union-attr]
                        elif kind is ToolCallDelta:
                            assert isinstance(event, ToolCallDelta)
                            start = {
                                "type": "tool_use",
                                "id": event.id or f"toolu_{event.index}",
                                "name": event.name,
                                "input": {},
                            }
                            blocks.switch("tool_use", event.index, start, out)
                            if not event.arguments_fragment:
                                continue
                            delta = {
                                "type": "input_json_delta",
                                "partial_json": event.arguments_fragment,
                            }
                        else:
                            assert isinstance(event, Finished)
                            blocks.close(out)
                            out.append(self._message_end(event))
                            continue
                        out.append(
                            _event(
                                "content_block_delta",
                                {
                                    "type": "content_block_delta",
                                    "index": blocks.index,
                                    "delta": delta,
                                },
                            )
                        )
                    if not out:
                        continue
                    if response is None:
                        response = web.StreamResponse(headers=SSE_HEADERS)
                        await response.prepare(request)
                    await response.write("".join(out).encode())
        except AgentmeshError as exc:
            if response is None:
                return error_response(Api.ANTHROPIC, exc, PARAMS)
            await response.write(_event("error", error_body(Api.ANTHROPIC, exc, PARAMS)).encode())
            await response.write_eof()
            return response
        assert response is not None
        await response.write_eof()
        return response

    @staticmethod
    def _message_start(call: GenerateCall, message_id: str) -> str:
        estimate = count_messages(call.messages, call.tools)  # the real count ends the stream
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": call.route,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": estimate, "output_tokens": 1},
        }
        return _event("message_start", {"type": "message_start", "message": message})

    @staticmethod
    def _message_end(done: Finished) -> str:
        delta = _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": STOP_REASONS[done.finish_reason], "stop_sequence": None},
                "usage": _usage(done),
                "agentmesh": {"cached": done.cached, "deployment": done.deployment},
            },
        )
        return delta + _event("message_stop", {"type": "message_stop"})
