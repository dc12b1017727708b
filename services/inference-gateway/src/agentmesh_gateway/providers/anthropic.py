"""Anthropic Messages API (``POST /v1/messages``, named SSE events, 529 overload).

Usage: input = ``message_start.usage.input_tokens`` + both cache counters; output = the last
``message_delta.usage.output_tokens`` (cumulative, never added to the start placeholder).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from agentmesh_gateway.domain import (
    FinishReason,
    GenerateCall,
    ProviderEvent,
    Role,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from agentmesh_gateway.errors import ErrorKind, UpstreamError
from agentmesh_gateway.providers._http import (
    UpstreamClient,
    drain,
    new_client,
    open_stream,
    parse_json,
    post_json,
    sse_events,
    stream_error,
)
from agentmesh_gateway.providers.base import Target, reject, schema_instruction, system_text

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 4096
_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


class AnthropicAdapter:
    name = "anthropic"
    supports_response_schema = False  # instructed via the system prompt, then validated

    def __init__(self, client: UpstreamClient | None = None) -> None:
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, call: GenerateCall, model: str) -> dict[str, Any]:
        cfg = call.config
        if cfg.temperature is not None and cfg.temperature > 1.0:
            raise reject("anthropic accepts temperature between 0 and 1")
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": cfg.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": _messages(call),
            "stream": True,
        }
        system = system_text(call.messages)
        if cfg.response_schema is not None:
            system = "\n\n".join(filter(None, [system, schema_instruction(cfg.response_schema)]))
        if system:
            body["system"] = system
        if cfg.temperature is not None:
            body["temperature"] = cfg.temperature
        elif cfg.top_p is not None:
            # Newer models refuse temperature and top_p together: top_p only when alone.
            body["top_p"] = cfg.top_p
        if cfg.stop:
            body["stop_sequences"] = list(cfg.stop)
        # Anthropic has no frequency/presence penalty nor seed: dropped.
        if call.tools and call.tool_choice is not ToolChoice.NONE:
            body["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": dict(tool.parameters) or {"type": "object", "properties": {}},
                }
                for tool in call.tools
            ]
            body["tool_choice"] = {
                "type": "any" if call.tool_choice is ToolChoice.REQUIRED else "auto"
            }
        return body

    async def stream(
        self, call: GenerateCall, target: Target
    ) -> AsyncGenerator[ProviderEvent, None]:
        headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            "anthropic-version": "2023-06-01",
        }
        if target.api_key:
            headers["x-api-key"] = target.api_key
        headers.update(target.headers)
        base = (target.base_url or DEFAULT_BASE_URL).rstrip("/")
        if not target.stream:
            async for event in self._complete(call, target, base, headers):
                yield event
            return
        prompt_tokens = 0
        cached = 0
        output_tokens: int | None = None
        finish: FinishReason | None = None
        tool_index: dict[int, int] = {}  # content block index -> tool call index
        async with open_stream(
            self._client,
            base + "/v1/messages",
            body=self.build_body(call, target.model),
            headers=headers,
            target=target,
            provider=self.name,
        ) as response:
            events = sse_events(response)
            try:
                async for sse in events:
                    kind = sse.event
                    if kind == "ping":
                        continue
                    payload = parse_json(sse.data, self.name)
                    if kind == "error" or payload.get("type") == "error":
                        raise stream_error(payload.get("error") or payload, self.name)
                    if kind == "content_block_delta":
                        delta = payload["delta"]
                        dtype = delta.get("type")
                        if dtype == "text_delta":
                            if delta.get("text"):
                                yield TextDelta(delta["text"])
                        elif dtype == "input_json_delta":
                            fragment = delta.get("partial_json") or ""
                            if fragment:
                                yield ToolCallDelta(tool_index[payload["index"]], "", "", fragment)
                        elif dtype == "thinking_delta" and delta.get("thinking"):
                            yield ThinkingDelta(delta["thinking"])
                    elif kind == "content_block_start":
                        block = payload.get("content_block") or {}
                        if block.get("type") == "tool_use":
                            index = len(tool_index)
                            tool_index[payload["index"]] = index
                            yield ToolCallDelta(
                                index, block.get("id", ""), block.get("name", ""), ""
                            )
                    elif kind == "message_start":
                        usage = (payload.get("message") or {}).get("usage") or {}
                        cached = int(usage.get("cache_read_input_tokens") or 0)
                        prompt_tokens = (
                            int(usage.get("input_tokens") or 0)
                            + int(usage.get("cache_creation_input_tokens") or 0)
                            + cached
                        )
                    elif kind == "message_delta":
                        reason = (payload.get("delta") or {}).get("stop_reason")
                        if reason:
                            finish = _FINISH.get(reason, FinishReason.STOP)
                        usage = payload.get("usage") or {}
                        if "output_tokens" in usage:
                            output_tokens = int(usage["output_tokens"])
                    elif kind == "message_stop":
                        usage_out = (
                            Usage(prompt_tokens, output_tokens, cached_prompt_tokens=cached)
                            if output_tokens is not None
                            else None
                        )
                        await drain(events)
                        yield StreamEnd(finish or FinishReason.STOP, usage_out)
                        return
            except httpx.HTTPError:
                if finish is None:
                    raise  # cut before the answer was complete: open_stream says truncated
            if finish is not None:
                # message_delta carried the stop reason and the final output count; only
                # message_stop is missing: the answer is complete, not worth buying again.
                usage_out = (
                    Usage(prompt_tokens, output_tokens, cached_prompt_tokens=cached)
                    if output_tokens is not None
                    else None
                )
                yield StreamEnd(finish, usage_out)
                return
        raise UpstreamError(ErrorKind.TRUNCATED, "anthropic stream ended without message_stop")

    async def _complete(
        self, call: GenerateCall, target: Target, base: str, headers: dict[str, str]
    ) -> AsyncGenerator[ProviderEvent, None]:
        body = {**self.build_body(call, target.model), "stream": False}
        answer = await post_json(
            self._client,
            base + "/v1/messages",
            body=body,
            headers={**headers, "accept": "application/json"},
            target=target,
            provider=self.name,
        )
        tools = 0
        for block in answer.get("content") or ():
            kind = block.get("type")
            if kind == "text" and block.get("text"):
                yield TextDelta(block["text"])
            elif kind == "thinking" and block.get("thinking"):
                yield ThinkingDelta(block["thinking"])
            elif kind == "tool_use":
                arguments = json.dumps(block.get("input") or {})
                yield ToolCallDelta(tools, block.get("id", ""), block.get("name", ""), arguments)
                tools += 1
        raw = answer.get("usage") or {}
        usage = None
        if "output_tokens" in raw:
            cached = int(raw.get("cache_read_input_tokens") or 0)
            usage = Usage(
                int(raw.get("input_tokens") or 0)
                + int(raw.get("cache_creation_input_tokens") or 0)
                + cached,
                int(raw["output_tokens"]),
                cached_prompt_tokens=cached,
            )
        yield StreamEnd(_FINISH.get(answer.get("stop_reason") or "", FinishReason.STOP), usage)


def _messages(call: GenerateCall) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in call.messages:
        if message.role is Role.SYSTEM:
            continue
        if message.role is Role.TOOL:
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            out.append({"role": "user", "content": [block]})
            continue
        if message.tool_calls:
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(
                {"type": "tool_use", "id": tc.id, "name": tc.name, "input": dict(tc.arguments)}
                for tc in message.tool_calls
            )
            out.append({"role": "assistant", "content": blocks})
            continue
        out.append({"role": message.role.value, "content": message.content})
    return out
