"""OpenAI's Chat Completions API over the gateway: ``POST /v1/chat/completions``, and
``GET /v1/models`` (the routes).

The ``model`` field names a route. Supported: text and tool calls (``tools``, ``tool_choice``
including one named function), ``response_format`` (``json_schema``, ``json_object``),
``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``, penalties, ``stop``,
``seed``, ``stream`` with ``stream_options.include_usage``. A streamed answer that fails after
output was sent ends with an ``{"error": …}`` event and no ``[DONE]`` (the SDKs raise), never a
silent truncation, and is not restarted on another deployment (a client cannot un-see text);
before any output, retries and fallback work as for gRPC.
"""

from __future__ import annotations

import json
import time
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
    Usage,
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

FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
}
ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
PARAMS = {
    "config.temperature": "temperature",
    "config.top_p": "top_p",
    "config.max_tokens": "max_tokens",
    "config.frequency_penalty": "frequency_penalty",
    "config.presence_penalty": "presence_penalty",
    "config.stop": "stop",
    "config.response_schema": "response_format.json_schema.schema",
}
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _tool_calls(value: Any, field: str) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidArgument.for_field(field, "must be a list")
    calls: list[ToolCall] = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        function = json_object(json_object(item, where).get("function"), f"{where}.function")
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise InvalidArgument.for_field(
                f"{where}.function.arguments", "must be a JSON object"
            ) from None
        calls.append(
            ToolCall(
                str(item.get("id") or f"call_{index}"),
                str(function.get("name") or ""),
                json_object(arguments, f"{where}.function.arguments"),
            )
        )
    return tuple(calls)


def messages_from(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidArgument.for_field("messages", "at least one message is required")
    out: list[ChatMessage] = []
    for index, item in enumerate(value):
        where = f"messages[{index}]"
        message = json_object(item, where)
        role = ROLES.get(str(message.get("role")))
        if role is None:
            raise InvalidArgument.for_field(
                f"{where}.role", "must be system, developer, user, assistant or tool"
            )
        out.append(
            ChatMessage(
                role=role,
                content=text_parts(message.get("content"), f"{where}.content"),
                name=str(message.get("name") or ""),
                tool_calls=_tool_calls(message.get("tool_calls"), f"{where}.tool_calls"),
                tool_call_id=str(message.get("tool_call_id") or ""),
            )
        )
    return tuple(out)


def tools_from(body: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise InvalidArgument.for_field("tools", "must be a list")
    tools: list[ToolSpec] = []
    for index, item in enumerate(raw):
        where = f"tools[{index}]"
        tool = json_object(item, where)
        if tool.get("type", "function") != "function":
            raise InvalidArgument.for_field(f"{where}.type", "only function tools are supported")
        function = json_object(tool.get("function"), f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument.for_field(f"{where}.function.name", "must be a non-empty string")
        parameters = function.get("parameters") or {}
        tools.append(
            ToolSpec(
                name,
                str(function.get("description") or ""),
                json_object(parameters, f"{where}.function.parameters"),
            )
        )
    choice = body.get("tool_choice")
    if choice is None or choice == "auto":
        return tuple(tools), ToolChoice.AUTO
    if choice == "none":
        return tuple(tools), ToolChoice.NONE
    if choice == "required":
        return tuple(tools), ToolChoice.REQUIRED
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        # One named function: only that tool is offered, and it must be called.
        wanted = choice["function"].get("name")
        named = [t for t in tools if t.name == wanted]
        if not named:
            raise InvalidArgument.for_field("tool_choice", f"no tool named {wanted!r}")
        return tuple(named), ToolChoice.REQUIRED
    raise InvalidArgument.for_field("tool_choice", "must be auto, none, required or a function")


def schema_from(body: dict[str, Any]) -> dict[str, Any] | None:
    raw = body.get("response_format")
    if raw is None:
        return None
    response_format = json_object(raw, "response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = json_object(response_format.get("json_schema"), "response_format.json_schema")
        return json_object(spec.get("schema"), "response_format.json_schema.schema")
    raise InvalidArgument.for_field(
        "response_format.type", "must be text, json_object or json_schema"
    )


def call_from(body: dict[str, Any], tenant: str, request: web.Request) -> GenerateCall:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidArgument.for_field("model", "must name a route (GET /v1/models lists them)")
    if opt_int(body, "n") not in (None, 1):
        raise InvalidArgument.for_field("n", "only one choice (n=1) is supported")
    if opt_bool(body, "logprobs"):
        raise InvalidArgument.for_field("logprobs", "log probabilities are not supported")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise InvalidArgument.for_field("stop", "must be a string or a list of strings")
    max_tokens = opt_int(body, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens")
    tools, tool_choice = tools_from(body)
    return GenerateCall(
        messages=messages_from(body.get("messages")),
        route=model,
        tools=tools,
        tool_choice=tool_choice,
        config=GenerationConfig(
            temperature=opt_number(body, "temperature"),
            max_tokens=max_tokens,
            top_p=opt_number(body, "top_p"),
            frequency_penalty=opt_number(body, "frequency_penalty"),
            presence_penalty=opt_number(body, "presence_penalty"),
            stop=tuple(stops),
            seed=opt_int(body, "seed"),
            response_schema=schema_from(body),
        ),
        tenant=tenant,
        # A client cannot take back text it was sent: a failure after output is an error.
        mid_stream=MidStreamPolicy.ERROR if opt_bool(body, "stream") else MidStreamPolicy.RESTART,
        fail_fast_on_rate_limit=True,
        cache=cache_mode_from(request, body),
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def gateway_json(done: Finished) -> dict[str, Any]:
    """agentmesh's own facts about the answer (the SDKs keep unknown fields)."""
    return {
        "cached": done.cached,
        "provider": done.provider,
        "model": done.model,
        "deployment": done.deployment,
        "cost_micros_usd": done.usage.cost_micros_usd,
        "usage_estimated": done.usage.estimated,
    }


def completion_json(done: Finished, route: str, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": done.text or None, "refusal": None}
    if done.tool_calls:
        message["tool_calls"] = [
            {
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": json.dumps(dict(tc.arguments))},
            }
            for tc in done.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": route,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": FINISH[done.finish_reason],
                "logprobs": None,
            }
        ],
        "usage": usage_json(done.usage),
        "system_fingerprint": None,
        "agentmesh": gateway_json(done),
    }


class OpenAIHandlers:
    def __init__(self, context: HttpContext) -> None:
        self._context = context

    async def models(self, request: web.Request) -> web.Response:
        await self._context.tenant(request)  # only callers with a key see the routes
        if request.headers.get("anthropic-version"):
            data = [
                {"type": "model", "id": r, "display_name": r, "created_at": "1970-01-01T00:00:00Z"}
                for r in self._context.routes()
            ]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            return web.json_response(
                {"data": data, "has_more": False, "first_id": first, "last_id": last}
            )
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": r, "object": "model", "created": 0, "owned_by": "agentmesh"}
                    for r in self._context.routes()
                ],
            }
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        tenant = await self._context.tenant(request)
        body = await read_json(request)
        try:
            call = call_from(body, tenant, request)
        except InvalidArgument as exc:
            return error_response(Api.OPENAI, exc, PARAMS)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if call.mid_stream is MidStreamPolicy.ERROR:  # streaming
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await self._stream(request, call, completion_id, include_usage)
        run = self._context.run(call)
        done: Finished | None = None
        try:
            async with aclosing(run.events()) as events:
                async for event in events:
                    if type(event) is Finished:
                        done = event
        except AgentmeshError as exc:
            return error_response(Api.OPENAI, exc, PARAMS)
        assert done is not None
        return web.json_response(completion_json(done, call.route, completion_id))

    async def _stream(
        self, request: web.Request, call: GenerateCall, completion_id: str, include_usage: bool
    ) -> web.StreamResponse:
        head = (
            f'{{"id":"{completion_id}","object":"chat.completion.chunk",'
            f'"created":{int(time.time())},"model":{json.dumps(call.route)},'
            '"choices":[{"index":0,"delta":'
        )
        tail = ',"logprobs":null,"finish_reason":null}]}\n\n'
        response: web.StreamResponse | None = None
        role_sent = False
        tools_started: set[int] = set()
        run = self._context.run(call)
        try:
            async with aclosing(coalesced(run.events())) as batches:
                async for batch in batches:
                    out: list[str] = []
                    for event in batch:
                        kind = type(event)
                        if kind is TextDelta or kind is ThinkingDelta:
                            key = "content" if kind is TextDelta else "reasoning_content"
                            delta: dict[str, Any] = {key: event.text}  # type: ignore[union-attr]
                        elif kind is ToolCallDelta:
                            assert isinstance(event, ToolCallDelta)
                            fragment: dict[str, Any] = {"index": event.index}
                            function: dict[str, Any] = {"arguments": event.arguments_fragment}
                            if event.index not in tools_started:
                                tools_started.add(event.index)
                                fragment["id"] = event.id or f"call_{event.index}"
                                fragment["type"] = "function"
                                function["name"] = event.name
                            fragment["function"] = function
                            delta = {"tool_calls": [fragment]}
                        elif kind is Finished:
                            assert isinstance(event, Finished)
                            if not role_sent:
                                role_sent = True
                                out.append(f'data: {head}{{"role":"assistant","content":""}}{tail}')
                            out.append(self._finish_chunk(head, event, include_usage))
                            continue
                        else:
                            continue  # attempt bookkeeping stays inside the gateway
                        if not role_sent:
                            role_sent = True
                            delta["role"] = "assistant"
                        out.append(f"data: {head}{json.dumps(delta)}{tail}")
                    if not out:
                        continue
                    if response is None:
                        response = web.StreamResponse(headers=SSE_HEADERS)
                        await response.prepare(request)
                    await response.write("".join(out).encode())
        except AgentmeshError as exc:
            if response is None:
                return error_response(Api.OPENAI, exc, PARAMS)
            # After output: an error event and no [DONE], so the client knows it is cut.
            await response.write(
                f"data: {json.dumps(error_body(Api.OPENAI, exc, PARAMS))}\n\n".encode()
            )
            await response.write_eof()
            return response
        assert response is not None
        await response.write_eof()
        return response

    @staticmethod
    def _finish_chunk(head: str, done: Finished, include_usage: bool) -> str:
        finish = (
            f'data: {head}{{}},"logprobs":null,"finish_reason":"{FINISH[done.finish_reason]}"}}],'
            f'"agentmesh":{json.dumps(gateway_json(done))}}}\n\n'
        )
        if include_usage:
            usage = (
                head.split('"choices"')[0]
                + f'"choices":[],"usage":{json.dumps(usage_json(done.usage))}}}'
            )
            finish += f"data: {usage}\n\n"
        return finish + "data: [DONE]\n\n"
