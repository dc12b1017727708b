"""Gemini Developer API (``models/{m}:streamGenerateContent?alt=sse``).

No terminator: the stream is complete only if a chunk carried ``finishReason`` (or a
``promptFeedback.blockReason``). ``usageMetadata`` is a running snapshot on every chunk:
the last one is kept, never summed. Tool calls arrive whole and without ids.
"""

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
    ToolChoice,
    Usage,
)
from agentmesh_gateway.errors import ErrorKind, UpstreamError
from agentmesh_gateway.providers._http import (
    UpstreamClient,
    new_client,
    open_stream,
    parse_json,
    sse_events,
    stream_error,
)
from agentmesh_gateway.providers.base import Target, check_stop, system_text

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_TOOL_FAILURES = frozenset(
    {"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"}
)


class GeminiAdapter:
    name = "gemini"
    supports_response_schema = True

    def __init__(self, client: UpstreamClient | None = None) -> None:
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, call: GenerateCall) -> dict[str, Any]:
        cfg = call.config
        check_stop(call, self.name, 5)
        body: dict[str, Any] = {"contents": _contents(call)}
        system = system_text(call.messages)
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        generation: dict[str, Any] = {}
        for key, value in (
            ("temperature", cfg.temperature),
            ("topP", cfg.top_p),
            ("maxOutputTokens", cfg.max_tokens),
            ("presencePenalty", cfg.presence_penalty),
            ("frequencyPenalty", cfg.frequency_penalty),
            ("seed", cfg.seed),
        ):
            if value is not None:
                generation[key] = value
        if cfg.stop:
            generation["stopSequences"] = list(cfg.stop)
        if cfg.response_schema is not None:
            generation["responseMimeType"] = "application/json"
            generation["responseJsonSchema"] = dict(cfg.response_schema)
        if generation:
            body["generationConfig"] = generation
        if call.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": dict(tool.parameters),
                        }
                        for tool in call.tools
                    ]
                }
            ]
            mode = {ToolChoice.AUTO: "AUTO", ToolChoice.NONE: "NONE", ToolChoice.REQUIRED: "ANY"}
            body["toolConfig"] = {"functionCallingConfig": {"mode": mode[call.tool_choice]}}
        return body

    async def stream(
        self, call: GenerateCall, target: Target
    ) -> AsyncGenerator[ProviderEvent, None]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        headers.update(target.headers)
        base = (target.base_url or DEFAULT_BASE_URL).rstrip("/")
        url = f"{base}/v1beta/models/{target.model}:streamGenerateContent?alt=sse"
        usage: Usage | None = None
        finish: FinishReason | None = None
        tool_calls = 0
        async with open_stream(
            self._client,
            url,
            body=self.build_body(call),
            headers=headers,
            timeout=target.timeout,
            provider=self.name,
        ) as response:
            async for sse in sse_events(response):
                chunk = parse_json(sse.data, self.name)
                if not isinstance(chunk, dict):
                    raise UpstreamError(ErrorKind.MALFORMED, "gemini sent a non-object chunk")
                if "error" in chunk:
                    raise stream_error(chunk["error"], self.name)
                meta = chunk.get("usageMetadata")
                if meta:
                    usage = Usage(
                        prompt_tokens=int(meta.get("promptTokenCount") or 0)
                        + int(meta.get("toolUsePromptTokenCount") or 0),
                        completion_tokens=int(meta.get("candidatesTokenCount") or 0)
                        + int(meta.get("thoughtsTokenCount") or 0),
                        cached_prompt_tokens=int(meta.get("cachedContentTokenCount") or 0),
                        reasoning_tokens=int(meta.get("thoughtsTokenCount") or 0),
                    )
                feedback = chunk.get("promptFeedback") or {}
                if feedback.get("blockReason"):
                    finish = FinishReason.CONTENT_FILTER
                for candidate in chunk.get("candidates") or ():
                    for part in (candidate.get("content") or {}).get("parts") or ():
                        text = part.get("text")
                        if text:
                            yield ThinkingDelta(text) if part.get("thought") else TextDelta(text)
                        call_part = part.get("functionCall")
                        if call_part:
                            name = call_part.get("name", "")
                            yield ToolCallDelta(
                                tool_calls,
                                call_part.get("id") or f"call_{tool_calls}",
                                name,
                                json.dumps(call_part.get("args") or {}),
                            )
                            tool_calls += 1
                    reason = candidate.get("finishReason")
                    if reason:
                        if reason in _TOOL_FAILURES:
                            raise UpstreamError(
                                ErrorKind.STREAM_ERROR, f"gemini finished with {reason}"
                            )
                        if reason == "STOP":
                            finish = FinishReason.TOOL_CALLS if tool_calls else FinishReason.STOP
                        elif reason == "MAX_TOKENS":
                            finish = FinishReason.LENGTH
                        elif reason in _FILTERED:
                            finish = FinishReason.CONTENT_FILTER
                        else:
                            finish = FinishReason.STOP
        if finish is None:
            raise UpstreamError(ErrorKind.TRUNCATED, "gemini stream ended without finishReason")
        yield StreamEnd(finish, usage)


def _contents(call: GenerateCall) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in call.messages:
        if message.role is Role.SYSTEM:
            continue
        if message.role is Role.TOOL:
            name = names.get(message.tool_call_id, message.name)
            try:
                result = json.loads(message.content)
            except ValueError:
                result = message.content
            response = result if isinstance(result, dict) else {"result": result}
            part = {"functionResponse": {"name": name, "response": response}}
            out.append({"role": "user", "parts": [part]})
            continue
        parts: list[dict[str, Any]] = []
        if message.content:
            parts.append({"text": message.content})
        for tc in message.tool_calls:
            names[tc.id] = tc.name
            parts.append({"functionCall": {"name": tc.name, "args": dict(tc.arguments)}})
        role = "model" if message.role is Role.ASSISTANT else "user"
        out.append({"role": role, "parts": parts or [{"text": ""}]})
    return out
