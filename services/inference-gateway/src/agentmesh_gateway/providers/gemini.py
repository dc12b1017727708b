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
    post_json,
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
        if not target.stream:
            answer = await post_json(
                self._client,
                f"{base}/v1beta/models/{target.model}:generateContent",
                body=self.build_body(call),
                headers={**headers, "accept": "application/json"},
                target=target,
                provider=self.name,
            )
            parsed = _Parsed()
            for event in parsed.feed(answer):
                yield event
            yield parsed.end()
            return
        url = f"{base}/v1beta/models/{target.model}:streamGenerateContent?alt=sse"
        parsed = _Parsed()
        async with open_stream(
            self._client,
            url,
            body=self.build_body(call),
            headers=headers,
            target=target,
            provider=self.name,
        ) as response:
            async for sse in sse_events(response):
                for event in parsed.feed(parse_json(sse.data, self.name)):
                    yield event
        yield parsed.end()


class _Parsed:
    """State over the chunks of one answer (each a whole ``GenerateContentResponse``)."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.finish: FinishReason | None = None
        self.tool_calls = 0

    def feed(self, chunk: Any) -> list[ProviderEvent]:
        if not isinstance(chunk, dict):
            raise UpstreamError(ErrorKind.MALFORMED, "gemini sent a non-object chunk")
        if "error" in chunk:
            raise stream_error(chunk["error"], "gemini")
        meta = chunk.get("usageMetadata")
        if meta:  # a running snapshot: the last one wins, never summed
            self.usage = Usage(
                prompt_tokens=int(meta.get("promptTokenCount") or 0)
                + int(meta.get("toolUsePromptTokenCount") or 0),
                completion_tokens=int(meta.get("candidatesTokenCount") or 0)
                + int(meta.get("thoughtsTokenCount") or 0),
                cached_prompt_tokens=int(meta.get("cachedContentTokenCount") or 0),
                reasoning_tokens=int(meta.get("thoughtsTokenCount") or 0),
            )
        feedback = chunk.get("promptFeedback") or {}
        if feedback.get("blockReason"):
            self.finish = FinishReason.CONTENT_FILTER
        events: list[ProviderEvent] = []
        for candidate in chunk.get("candidates") or ():
            for part in (candidate.get("content") or {}).get("parts") or ():
                text = part.get("text")
                if text:
                    events.append(ThinkingDelta(text) if part.get("thought") else TextDelta(text))
                call_part = part.get("functionCall")
                if call_part:
                    events.append(
                        ToolCallDelta(
                            self.tool_calls,
                            call_part.get("id") or f"call_{self.tool_calls}",
                            call_part.get("name", ""),
                            json.dumps(call_part.get("args") or {}),
                        )
                    )
                    self.tool_calls += 1
            reason = candidate.get("finishReason")
            if reason:
                if reason in _TOOL_FAILURES:
                    raise UpstreamError(ErrorKind.STREAM_ERROR, f"gemini finished with {reason}")
                if reason == "STOP":
                    self.finish = FinishReason.TOOL_CALLS if self.tool_calls else FinishReason.STOP
                elif reason == "MAX_TOKENS":
                    self.finish = FinishReason.LENGTH
                elif reason in _FILTERED:
                    self.finish = FinishReason.CONTENT_FILTER
                else:
                    self.finish = FinishReason.STOP
        return events

    def end(self) -> StreamEnd:
        """No terminator on Gemini: complete only if a finish reason was seen."""
        if self.finish is None:
            raise UpstreamError(ErrorKind.TRUNCATED, "gemini stream ended without finishReason")
        return StreamEnd(self.finish, self.usage)


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
