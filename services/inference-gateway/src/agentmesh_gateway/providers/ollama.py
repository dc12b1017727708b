"""Ollama native chat (``POST /api/chat``, NDJSON, metrics only on the ``done`` line)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from agentmesh_gateway.domain import (
    FinishReason,
    GenerateCall,
    ProviderEvent,
    Role,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolCallDelta,
    Usage,
)
from agentmesh_gateway.errors import ErrorKind, UpstreamError
from agentmesh_gateway.providers._http import (
    UpstreamClient,
    drain,
    new_client,
    open_stream,
    post_json,
    stream_error,
)
from agentmesh_gateway.providers.base import Target

DEFAULT_BASE_URL = "http://127.0.0.1:11434"


class OllamaAdapter:
    name = "ollama"
    supports_response_schema = True

    def __init__(self, client: UpstreamClient | None = None) -> None:
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, call: GenerateCall, model: str) -> dict[str, Any]:
        cfg = call.config
        options: dict[str, Any] = {}
        for key, value in (
            ("temperature", cfg.temperature),
            ("top_p", cfg.top_p),
            ("num_predict", cfg.max_tokens),
            ("frequency_penalty", cfg.frequency_penalty),
            ("presence_penalty", cfg.presence_penalty),
            ("seed", cfg.seed),
        ):
            if value is not None:
                options[key] = value
        if cfg.stop:
            options["stop"] = list(cfg.stop)
        body: dict[str, Any] = {"model": model, "messages": _messages(call), "stream": True}
        if options:
            body["options"] = options
        if call.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters),
                    },
                }
                for tool in call.tools
            ]
        if cfg.response_schema is not None:
            body["format"] = dict(cfg.response_schema)
        return body

    async def stream(
        self, call: GenerateCall, target: Target
    ) -> AsyncGenerator[ProviderEvent, None]:
        headers = {"content-type": "application/json"}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        headers.update(target.headers)
        base = (target.base_url or DEFAULT_BASE_URL).rstrip("/")
        if not target.stream:
            answer = await post_json(
                self._client,
                base + "/api/chat",
                body={**self.build_body(call, target.model), "stream": False},
                headers=headers,
                target=target,
                provider=self.name,
            )
            if "error" in answer:
                raise stream_error(answer["error"], self.name)
            message = answer.get("message") or {}
            if message.get("thinking"):
                yield ThinkingDelta(message["thinking"])
            if message.get("content"):
                yield TextDelta(message["content"])
            calls = message.get("tool_calls") or ()
            for index, tc in enumerate(calls):
                function = tc.get("function") or {}
                yield ToolCallDelta(
                    index,
                    tc.get("id") or f"call_{index}",
                    function.get("name", ""),
                    json.dumps(function.get("arguments") or {}),
                )
            yield StreamEnd(_finish(answer, len(calls)), _usage(answer))
            return
        tool_calls = 0
        async with open_stream(
            self._client,
            base + "/api/chat",
            body=self.build_body(call, target.model),
            headers=headers,
            target=target,
            provider=self.name,
        ) as response:
            lines = response.aiter_lines()
            async for line in lines:
                if not line.strip():
                    continue
                try:
                    chunk = json.loads(line)
                except ValueError:
                    raise UpstreamError(
                        ErrorKind.MALFORMED, "ollama sent a line that is not JSON"
                    ) from None
                if "error" in chunk:
                    raise stream_error(chunk["error"], self.name)
                message = chunk.get("message") or {}
                if message.get("content"):
                    yield TextDelta(message["content"])
                if message.get("thinking"):
                    yield ThinkingDelta(message["thinking"])
                for tc in message.get("tool_calls") or ():
                    function = tc.get("function") or {}
                    yield ToolCallDelta(
                        tool_calls,
                        tc.get("id") or f"call_{tool_calls}",
                        function.get("name", ""),
                        json.dumps(function.get("arguments") or {}),
                    )
                    tool_calls += 1
                if chunk.get("done"):
                    await drain(lines)
                    yield StreamEnd(_finish(chunk, tool_calls), _usage(chunk))
                    return
        raise UpstreamError(ErrorKind.TRUNCATED, "ollama stream ended without done:true")


def _finish(done: dict[str, Any], tool_calls: int) -> FinishReason:
    """Ollama says "stop" after tool calls too: infer them from the content."""
    if (done.get("done_reason") or "stop") == "length":
        return FinishReason.LENGTH
    return FinishReason.TOOL_CALLS if tool_calls else FinishReason.STOP


def _usage(done: dict[str, Any]) -> Usage | None:
    """Counts from the ``done`` line; ``prompt_eval_count`` is absent when fully cached."""
    if "eval_count" not in done:
        return None
    return Usage(
        prompt_tokens=int(done.get("prompt_eval_count") or 0),
        completion_tokens=int(done.get("eval_count") or 0),
    )


def _messages(call: GenerateCall) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in call.messages:
        item: dict[str, Any] = {"role": message.role.value, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": tc.name, "arguments": dict(tc.arguments)}}
                for tc in message.tool_calls
            ]
        if message.role is Role.TOOL:
            item["tool_name"] = message.name
            if message.tool_call_id:
                item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out
