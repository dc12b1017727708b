"""One attempt's state while it streams, and how a finished stream becomes `Finished`."""

from __future__ import annotations

import json
from typing import Any

from .domain import Finished, FinishReason, GenerateCall, StreamEnd, ToolCall, Usage
from .errors import ErrorKind, UpstreamError
from .observability import GatewayMetrics
from .routes import Deployment
from .tokens import count_messages, count_text
from .validation import validated_json

__all__ = ["AttemptState", "finish_attempt"]


class AttemptState:
    """What one attempt produced so far."""

    __slots__ = ("first_token_at", "streamed", "text", "tools")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tools: dict[int, list[Any]] = {}  # index -> [id, name, [fragments]]
        self.streamed = False
        self.first_token_at = 0.0

    def streamed_tokens(self) -> int:
        tokens = count_text("".join(self.text))
        for _, name, fragments in self.tools.values():
            tokens += count_text(name) + count_text("".join(fragments))
        return tokens


def finish_attempt(
    call: GenerateCall,
    deployment: Deployment,
    state: AttemptState,
    end: StreamEnd,
    metrics: GatewayMetrics,
) -> Finished:
    """The attempt's `Finished`: tool calls parsed, usage (estimated when the provider sent
    none) and cost counted, structured output validated against the response schema."""
    tool_calls: list[ToolCall] = []
    for index in sorted(state.tools):
        call_id, name, fragments = state.tools[index]
        raw = "".join(fragments).strip() or "{}"
        try:
            arguments = json.loads(raw)
        except ValueError:
            raise UpstreamError(
                ErrorKind.MALFORMED, f"tool call {name!r} arguments are not valid JSON"
            ) from None
        if not isinstance(arguments, dict):
            raise UpstreamError(
                ErrorKind.MALFORMED, f"tool call {name!r} arguments are not a JSON object"
            )
        tool_calls.append(ToolCall(call_id or f"call_{index}", name, arguments))
    finish = end.finish_reason
    if tool_calls and finish is FinishReason.STOP:
        finish = FinishReason.TOOL_CALLS
    text = "".join(state.text)
    usage = end.usage
    if usage is None:
        completion = count_text(text) + sum(
            count_text(tc.name) + count_text(json.dumps(tc.arguments)) for tc in tool_calls
        )
        usage = Usage(
            prompt_tokens=count_messages(call.messages, call.tools),
            completion_tokens=completion,
            estimated=True,
        )
    cost = (
        usage.prompt_tokens * deployment.input_price_micros_per_million
        + usage.completion_tokens * deployment.output_price_micros_per_million
        + 500_000
    ) // 1_000_000
    usage = Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        estimated=usage.estimated,
        cost_micros_usd=cost,
    )
    provider, model = deployment.provider, deployment.model
    estimated = "true" if usage.estimated else "false"
    metrics.tokens.labels(provider, model, "prompt", estimated).inc(usage.prompt_tokens)
    metrics.tokens.labels(provider, model, "completion", estimated).inc(usage.completion_tokens)
    if cost:
        metrics.cost.labels(provider, model).inc(cost)
    structured: dict[str, Any] | None = None
    schema = call.config.response_schema
    try:
        if schema is not None and not tool_calls and finish is FinishReason.STOP:
            structured = validated_json(text, schema)
        elif schema is not None and not tool_calls and finish is FinishReason.LENGTH:
            # Constrained output is valid up to the cut, but a cut JSON value is no value.
            raise UpstreamError(
                ErrorKind.INVALID_OUTPUT,
                f"the output reached max_tokens ({call.config.max_tokens}) before the JSON "
                "value was complete",
            )
    except UpstreamError as error:
        error.usage = usage  # the answer was paid for, though it is refused
        raise
    return Finished(
        finish_reason=finish,
        usage=usage,
        provider=provider,
        model=model,
        deployment=deployment.name,
        text=text,
        tool_calls=tuple(tool_calls),
        structured_output=structured,
    )
