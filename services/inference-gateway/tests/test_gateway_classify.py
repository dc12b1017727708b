"""Every provider's documented error bodies map to the right retry decision (provider-wire
pitfalls 10-12: 400 bad keys on Gemini and xAI, 429 that is quota and not a window, retry
hints in headers, bodies and text)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from agentmesh_gateway_fakes import wire

from agentmesh_gateway.errors import ErrorKind
from agentmesh_gateway.providers._http import classify_http, stream_error

ANTHROPIC_BILLING = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API.",
    },
}
XAI_CREDITS = {
    "code": "resource-exhausted",
    "error": "Your team abc has either used all available credits or reached its monthly "
    "spending limit.",
}
GROQ_413 = {
    "error": {
        "message": "Request too large for model `qwen/qwen3-32b` on tokens per minute (TPM): "
        "Limit 6000, Requested 9837, please reduce your message size and try again.",
        "type": "tokens",
        "code": "rate_limit_exceeded",
    }
}
GROQ_429_TEXT = {
    "error": {
        "message": "Rate limit reached for model `openai/gpt-oss-20b` on tokens per minute "
        "(TPM): Limit 8000, Used 3211, Requested 4828. Please try again in 292.5ms.",
        "type": "tokens",
        "code": "rate_limit_exceeded",
    }
}
OLLAMA_BUSY = {"error": "server busy, please try again.  maximum pending requests exceeded"}
GEMINI_DAILY = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
            }
        ],
    }
}
XAI_CONTEXT = {
    "code": "invalid-argument",
    "error": "This model's maximum prompt length is 131072 but the request contains 537812 tokens.",
}
GEMINI_CONTEXT = {
    "error": {
        "code": 400,
        "message": "The input token count (1196265) exceeds the maximum number of tokens allowed "
        "(1048575).",
        "status": "INVALID_ARGUMENT",
    }
}


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "wait"),
    [
        (400, wire.GEMINI_BAD_KEY, {}, ErrorKind.AUTH, None),
        (400, wire.XAI_BAD_KEY, {}, ErrorKind.AUTH, None),
        (401, wire.openai_401("sk-proj-abcdefghijklmnop"), {}, ErrorKind.AUTH, None),
        (429, wire.OPENAI_429, {"retry-after": "2"}, ErrorKind.RATE_LIMITED, 2.0),
        (429, wire.OPENAI_429, {}, ErrorKind.RATE_LIMITED, 2.0),  # "Please try again in 2s."
        (429, GROQ_429_TEXT, {}, ErrorKind.RATE_LIMITED, 0.2925),
        (429, wire.OPENAI_429, {"retry-after-ms": "1500"}, ErrorKind.RATE_LIMITED, 1.5),
        (429, wire.GEMINI_429, {}, ErrorKind.RATE_LIMITED, 0.05),  # RetryInfo in the body
        (429, wire.OPENAI_QUOTA, {}, ErrorKind.QUOTA_EXHAUSTED, None),
        (429, XAI_CREDITS, {}, ErrorKind.QUOTA_EXHAUSTED, None),
        (429, GEMINI_DAILY, {}, ErrorKind.QUOTA_EXHAUSTED, None),
        (400, ANTHROPIC_BILLING, {}, ErrorKind.QUOTA_EXHAUSTED, None),
        (413, GROQ_413, {}, ErrorKind.BAD_REQUEST, None),
        (529, wire.ANTHROPIC_529, {}, ErrorKind.OVERLOADED, None),
        (503, OLLAMA_BUSY, {}, ErrorKind.OVERLOADED, None),
        (498, {"error": {"message": "capacity_exceeded"}}, {}, ErrorKind.OVERLOADED, None),
        (500, wire.OPENAI_500, {}, ErrorKind.SERVER_ERROR, None),
        (408, {}, {}, ErrorKind.TIMEOUT, None),
        (400, wire.OPENAI_CONTEXT, {}, ErrorKind.CONTEXT_LENGTH, None),
        (400, wire.ANTHROPIC_CONTEXT, {}, ErrorKind.CONTEXT_LENGTH, None),
        (400, XAI_CONTEXT, {}, ErrorKind.CONTEXT_LENGTH, None),
        (400, GEMINI_CONTEXT, {}, ErrorKind.CONTEXT_LENGTH, None),
        (404, {"error": "model 'llama9' not found"}, {}, ErrorKind.NOT_FOUND, None),
    ],
)
def test_provider_error_bodies_are_classified(
    status: int, body: Any, headers: dict[str, str], kind: ErrorKind, wait: float | None
) -> None:
    error = classify_http(status, json.dumps(body).encode(), headers, "p")
    assert error.kind is kind, error.message
    assert (
        error.retry_after == pytest.approx(wait) if wait is not None else error.retry_after is None
    )


def test_an_anthropic_429_without_retry_after_is_a_spend_cap() -> None:
    body = json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "limit reached"}}
    ).encode()
    assert (
        classify_http(429, body, {"retry-after": "13"}, "anthropic").kind is ErrorKind.RATE_LIMITED
    )
    assert classify_http(429, body, {}, "anthropic").kind is ErrorKind.QUOTA_EXHAUSTED


def test_x_should_retry_overrides_the_status() -> None:
    body = json.dumps(wire.OPENAI_500).encode()
    assert classify_http(500, body, {}, "p").retryable
    assert not classify_http(500, body, {"x-should-retry": "false"}, "p").retryable
    assert classify_http(409, b"{}", {"x-should-retry": "true"}, "p").retryable


def test_keys_echoed_in_error_bodies_are_scrubbed() -> None:
    error = classify_http(
        401, json.dumps(wire.openai_401("sk-proj-abcdefghijklmnop")).encode(), {}, "p"
    )
    assert "sk-proj" not in error.message
    assert "[REDACTED]" in error.message


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, ErrorKind.OVERLOADED),
        (
            {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
            ErrorKind.OVERLOADED,
        ),
        ("an error was encountered while running the model", ErrorKind.STREAM_ERROR),
        ({"type": "rate_limit_error", "message": "slow down"}, ErrorKind.RATE_LIMITED),
    ],
)
def test_error_events_inside_a_stream_are_classified(payload: Any, kind: ErrorKind) -> None:
    assert stream_error(payload, "p").kind is kind
