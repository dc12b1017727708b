"""OpenAI Chat Completions and the providers that speak it: xAI, Groq, any compatible URL.

Differences handled here (see provider-wire/openai.md, xai.md, groq.md):
* usage: OpenAI/xAI/compatible send a ``choices: []`` chunk (only with ``include_usage``);
  Groq puts it in the finish chunk (``usage`` and ``x_groq.usage``); the last one wins,
  nothing is summed. xAI's ``completion_tokens`` excludes reasoning tokens: they are added.
* tool calls: argument fragments by ``index`` (OpenAI) or whole (xAI, Groq): both are
  forwarded as fragments and assembled by the gateway.
* reasoning: ``reasoning_content`` (xAI) or ``reasoning`` (Groq, Ollama /v1).
* errors inside the 200 stream: ``{"error": …}`` payloads and Groq's ``x_groq.error``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import httpx

from agentmesh_gateway.domain import (
    FinishReason,
    GenerateCall,
    ProviderEvent,
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
    post_json,
    stream_error,
)
from agentmesh_gateway.providers.base import (
    Target,
    check_stop,
    openai_messages,
    openai_tool_choice,
    openai_tools,
)

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
    "": FinishReason.STOP,  # historic xAI value next to tool calls
}
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)")
_XAI_REASONING = re.compile(r"^(grok-3-mini|grok-4|grok-code)")


@dataclass(frozen=True)
class Flavor:
    """What differs between the OpenAI-compatible providers."""

    name: str
    default_base_url: str
    max_tokens_field: str = "max_tokens"
    include_usage: bool = True
    max_stop: int = 4
    send_names: bool = True
    penalties: bool = True
    completion_excludes_reasoning: bool = False


OPENAI = Flavor("openai", "https://api.openai.com/v1", max_tokens_field="max_completion_tokens")
XAI = Flavor("xai", "https://api.x.ai/v1", completion_excludes_reasoning=True)
GROQ = Flavor(
    "groq",
    "https://api.groq.com/openai/v1",
    max_tokens_field="max_completion_tokens",
    include_usage=False,
    send_names=False,
    penalties=False,
)
COMPATIBLE = Flavor("openai_compatible", "http://127.0.0.1:8000/v1", max_stop=16)


class OpenAIChatAdapter:
    """``POST {base}/chat/completions`` with ``stream: true``."""

    supports_response_schema = True

    def __init__(self, flavor: Flavor, client: UpstreamClient | None = None) -> None:
        self.flavor = flavor
        self.name = flavor.name
        self._client = client or new_client()

    async def aclose(self) -> None:
        await self._client.aclose()

    def build_body(self, call: GenerateCall, model: str) -> dict[str, Any]:
        flavor = self.flavor
        cfg = call.config
        check_stop(call, flavor.name, flavor.max_stop)
        body: dict[str, Any] = {
            "model": model,
            "messages": openai_messages(call, with_names=flavor.send_names),
            "stream": True,
        }
        if flavor.include_usage:
            body["stream_options"] = {"include_usage": True}
        reasoning_model = (flavor is OPENAI and _OPENAI_REASONING.match(model) is not None) or (
            flavor is XAI and _XAI_REASONING.match(model) is not None
        )
        # Reasoning models refuse sampling knobs / stop / penalties: dropped, not sent.
        if cfg.temperature is not None and not (flavor is OPENAI and reasoning_model):
            body["temperature"] = cfg.temperature
        if cfg.top_p is not None and not (flavor is OPENAI and reasoning_model):
            body["top_p"] = cfg.top_p
        if cfg.max_tokens is not None:
            body[flavor.max_tokens_field] = cfg.max_tokens
        if flavor.penalties and not reasoning_model:
            if cfg.frequency_penalty is not None:
                body["frequency_penalty"] = cfg.frequency_penalty
            if cfg.presence_penalty is not None:
                body["presence_penalty"] = cfg.presence_penalty
        if cfg.stop and not reasoning_model:
            body["stop"] = list(cfg.stop)
        if cfg.seed is not None:
            body["seed"] = cfg.seed
        if call.tools:
            body["tools"] = openai_tools(call)
            body["tool_choice"] = openai_tool_choice(call.tool_choice)
        elif call.tool_choice is ToolChoice.REQUIRED:
            raise UpstreamError(ErrorKind.BAD_REQUEST, "tool_choice REQUIRED needs tools")
        if cfg.response_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": dict(cfg.response_schema)},
            }
        return body

    def headers(self, target: Target) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if target.api_key:
            headers["authorization"] = f"Bearer {target.api_key}"
        headers.update(target.headers)
        return headers

    async def stream(
        self, call: GenerateCall, target: Target
    ) -> AsyncGenerator[ProviderEvent, None]:
        body = self.build_body(call, target.model)
        # Groq refuses response_format together with stream: ask once, replay as events.
        if not target.stream or (self.flavor is GROQ and call.config.response_schema):
            async for event in self._complete(body, target):
                yield event
            return
        base = (target.base_url or self.flavor.default_base_url).rstrip("/")
        provider = self.flavor.name
        excludes_reasoning = self.flavor.completion_excludes_reasoning
        finish: FinishReason | None = None
        usage: Usage | None = None
        saw_tool = False
        async with open_stream(
            self._client,
            base + "/chat/completions",
            body=body,
            headers=self.headers(target),
            target=target,
            provider=provider,
        ) as response:
            rest = b""
            reads = response.aiter_raw()  # identity encoding was asked for
            try:
                async for data in reads:
                    # Everything that arrived in one read is parsed together, and consecutive
                    # text pieces of it become one delta: no delta waits for a later read.
                    lines = (rest + data).split(b"\n")
                    rest = lines.pop()
                    text: list[str] = []
                    out: list[ProviderEvent] = []
                    for raw in lines:
                        if not raw.startswith(b"data:"):
                            continue  # blank separators, ": keepalive" comments
                        payload = raw[5:].strip()
                        if payload == b"[DONE]":
                            if text:
                                out.append(TextDelta("".join(text)))
                            for event in out:
                                yield event
                            if finish is None:
                                raise UpstreamError(
                                    ErrorKind.TRUNCATED,
                                    f"{provider} sent [DONE] without finish_reason",
                                )
                            if saw_tool and finish is FinishReason.STOP:
                                finish = FinishReason.TOOL_CALLS
                            await drain(reads)
                            yield StreamEnd(finish, usage)
                            return
                        try:
                            chunk = json.loads(payload)
                        except ValueError:
                            raise UpstreamError(
                                ErrorKind.MALFORMED, f"{provider} sent a chunk that is not JSON"
                            ) from None
                        if not isinstance(chunk, dict):
                            raise UpstreamError(
                                ErrorKind.MALFORMED, f"{provider} sent a non-object"
                            )
                        if chunk.get("error"):
                            raise stream_error(chunk["error"], provider)
                        x_groq = chunk.get("x_groq")
                        if x_groq:
                            if x_groq.get("error"):
                                raise stream_error(x_groq["error"], provider)
                            if x_groq.get("usage") and not chunk.get("usage"):
                                usage = _usage(x_groq["usage"], excludes_reasoning)
                        if chunk.get("usage"):
                            usage = _usage(chunk["usage"], excludes_reasoning)
                        for choice in chunk.get("choices") or ():
                            delta = choice.get("delta") or {}
                            content = delta.get("content")
                            if content:
                                text.append(content)
                            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                            if reasoning:
                                if text:
                                    out.append(TextDelta("".join(text)))
                                    text = []
                                out.append(ThinkingDelta(reasoning))
                            for tc in delta.get("tool_calls") or ():
                                if text:
                                    out.append(TextDelta("".join(text)))
                                    text = []
                                saw_tool = True
                                function = tc.get("function") or {}
                                arguments = function.get("arguments") or ""
                                if not isinstance(arguments, str):
                                    arguments = json.dumps(arguments)
                                out.append(
                                    ToolCallDelta(
                                        int(tc.get("index") or 0),
                                        tc.get("id") or "",
                                        function.get("name") or "",
                                        arguments,
                                    )
                                )
                            reason = choice.get("finish_reason")
                            if reason is not None:
                                finish = _FINISH.get(reason, FinishReason.STOP)
                    if text:
                        out.append(TextDelta("".join(text)))
                    for event in out:
                        yield event
            except httpx.HTTPError:
                if finish is None:
                    raise  # cut before the answer was complete: open_stream says truncated
            if finish is not None:
                # The finish chunk came but [DONE] (and maybe the usage chunk) did not: the
                # answer is complete; buying it again would bill it twice.
                if saw_tool and finish is FinishReason.STOP:
                    finish = FinishReason.TOOL_CALLS
                yield StreamEnd(finish, usage)
                return
        raise UpstreamError(ErrorKind.TRUNCATED, f"{provider} stream ended without [DONE]")

    async def _complete(
        self, body: dict[str, Any], target: Target
    ) -> AsyncGenerator[ProviderEvent, None]:
        """One non-streaming request (``stream: false``) turned into the same events."""
        provider = self.flavor.name
        body = {**body, "stream": False}
        body.pop("stream_options", None)
        base = (target.base_url or self.flavor.default_base_url).rstrip("/")
        headers = self.headers(target)
        headers["accept"] = "application/json"
        answer = await post_json(
            self._client,
            base + "/chat/completions",
            body=body,
            headers=headers,
            target=target,
            provider=provider,
        )
        try:
            choice = answer["choices"][0]
            message = choice.get("message") or {}
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(
                ErrorKind.MALFORMED, f"{provider} sent an unreadable answer"
            ) from None
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning:
            yield ThinkingDelta(reasoning)
        if message.get("content"):
            yield TextDelta(message["content"])
        calls = message.get("tool_calls") or ()
        for index, tc in enumerate(calls):
            function = tc.get("function") or {}
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            yield ToolCallDelta(index, tc.get("id") or "", function.get("name") or "", arguments)
        finish = _FINISH.get(choice.get("finish_reason") or "", FinishReason.STOP)
        if calls and finish is FinishReason.STOP:
            finish = FinishReason.TOOL_CALLS
        raw_usage = answer.get("usage") or (answer.get("x_groq") or {}).get("usage")
        usage = _usage(raw_usage, self.flavor.completion_excludes_reasoning) if raw_usage else None
        yield StreamEnd(finish, usage)


def _usage(raw: dict[str, Any], excludes_reasoning: bool) -> Usage:
    details = raw.get("completion_tokens_details") or {}
    reasoning = int(details.get("reasoning_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    if excludes_reasoning:
        completion += reasoning
    cached = int((raw.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return Usage(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=completion,
        cached_prompt_tokens=cached,
        reasoning_tokens=reasoning,
    )
