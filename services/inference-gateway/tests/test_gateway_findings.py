"""Findings of the independent fault run, each pinned by a test that failed before its fix:
finished answers without a terminator, refused keys on one deployment, attempt spans and
upstream client spans, structured output cut at max_tokens, and providers' rate-limit
headers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.calls import ask, compact, config, finished, one
from agentmesh_gateway_fakes.server import FakeProvider, Reply, Stream
from opentelemetry.trace import SpanKind

from agentmesh_common import FailedPrecondition, ResourceExhausted
from agentmesh_gateway.domain import AttemptFailed, FinishReason
from agentmesh_gateway.limits import CircuitState

KEY = "sk-findings-abcdefghijklmnop"
ENV = {"KEY": KEY}
OK = Stream(wire.sse(*wire.openai_text(), done=True))


def two(url1: str, url2: str, provider: str = "openai", extra: str = "") -> str:
    return f"""
routes:
  main:
    - {{name: first, provider: {provider}, model: m1, base_url: '{url1}', api_key_env: KEY{extra}}}
    - {{name: second, provider: openai, model: m2, base_url: '{url2}', api_key_env: KEY,
        priority: 1}}
"""


def failures(events: list[Any]) -> list[AttemptFailed]:
    return [e for e in events if isinstance(e, AttemptFailed)]


# --- a finished answer is finished ----------------------------------------------------------


@pytest.mark.parametrize("cut", [False, True], ids=["eof", "reset"])
async def test_an_openai_answer_with_finish_reason_but_no_done_is_not_bought_again(
    fake: FakeProvider, harness: Any, cut: bool
) -> None:
    chunks = wire.sse(*wire.openai_text())  # finish chunk and usage chunk, then no [DONE]
    fake.push(Stream(chunks, cut_after=len(chunks) if cut else None), OK, OK)
    events = await harness(one("openai", "m", fake.url), ENV).run(ask())
    assert compact(events) == ["started", "delta", "finished"]
    done = finished(events)
    assert done.text == "Expect mild weather in Paris tomorrow."
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (112, 8)
    assert len(fake.requests) == 1


async def test_an_openai_answer_cut_after_finish_before_usage_is_finished_with_an_estimate(
    fake: FakeProvider, harness: Any
) -> None:
    chunks = wire.sse(*wire.openai_text(usage=None))
    fake.push(Stream(chunks, cut_after=len(chunks)), OK)
    events = await harness(one("openai", "m", fake.url), ENV).run(ask())
    done = finished(events)
    assert done.finish_reason is FinishReason.STOP
    assert done.usage.estimated
    assert len(fake.requests) == 1


async def test_an_anthropic_answer_with_stop_reason_but_no_message_stop_is_finished(
    fake: FakeProvider, harness: Any
) -> None:
    good = Stream(wire.named_sse(*wire.anthropic_text()))
    fake.push(Stream(wire.named_sse(*wire.anthropic_text()[:-1])), good)
    events = await harness(one("anthropic", "claude", fake.url), ENV).run(ask())
    assert compact(events) == ["started", "delta", "finished"]
    assert finished(events).usage.completion_tokens == 11
    assert len(fake.requests) == 1


async def test_a_stream_cut_before_its_finish_reason_is_still_retried(
    fake: FakeProvider, harness: Any
) -> None:
    chunks = wire.sse(*wire.openai_text()[:3])
    fake.push(Stream(chunks, cut_after=len(chunks)), OK)
    events = await harness(one("openai", "m", fake.url), ENV).run(ask())
    assert failures(events)[0].reason == "STREAM_TRUNCATED"
    assert "restart" in compact(events)
    assert len(fake.requests) == 2


# --- a refused key belongs to its deployment -----------------------------------------------


@pytest.mark.parametrize(
    ("provider", "status", "body"),
    [
        ("openai", 401, wire.openai_401(KEY)),
        ("openai", 403, {"error": {"message": "forbidden", "type": "permission_error"}}),
        (
            "anthropic",
            401,
            {"type": "error", "error": {"type": "authentication_error", "message": "bad key"}},
        ),
    ],
)
async def test_an_auth_error_skips_the_deployment_and_falls_back(
    fake: FakeProvider, fake2: FakeProvider, harness: Any, provider: str, status: int, body: Any
) -> None:
    fake.default = Reply(status, body)
    fake2.default = OK
    h = harness(two(fake.url, fake2.url, provider), ENV)
    events = await h.run(ask())
    (failed,) = failures(events)
    assert failed.reason == "PROVIDER_AUTH_FAILED"
    assert failed.will_fall_back
    assert finished(events).deployment == "second"
    assert len(fake.requests) == 1  # not retried
    # The next call does not try the refused deployment again; status says why.
    events = await h.run(ask())
    assert compact(events) == ["started", "delta", "finished"]
    assert len(fake.requests) == 1
    view = next(v for v in h.gateway.status() if v.deployment.name == "first")
    assert view.circuit is CircuitState.OPEN
    assert view.last_error is not None
    assert view.last_error.kind.value == "PROVIDER_AUTH_FAILED"
    assert KEY not in view.last_error.message


async def test_an_auth_error_on_the_only_deployment_is_a_typed_error(
    fake: FakeProvider, harness: Any
) -> None:
    fake.default = Reply(401, wire.openai_401(KEY))
    h = harness(one("openai", "m", fake.url), ENV)
    with pytest.raises(FailedPrecondition) as caught:
        await h.run(ask())
    assert caught.value.reason == "PROVIDER_AUTH_FAILED"
    with pytest.raises(FailedPrecondition) as again:  # skipped now, but still says why
        await h.run(ask())
    assert again.value.reason == "PROVIDER_AUTH_FAILED"
    assert len(fake.requests) == 1


# --- spans ------------------------------------------------------------------------------------


async def test_attempt_spans_say_ok_for_a_finished_call_and_http_has_a_client_span(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(503, wire.OPENAI_503), OK)
    h = harness(one("openai", "m", fake.url), ENV)
    await h.run(ask())
    spans = h.spans.get_finished_spans()
    attempts = [s for s in spans if s.name == "gateway.attempt"]
    assert [s.attributes["gateway.outcome"] for s in attempts] == ["error", "ok"]
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(clients) == 2
    for client, attempt in zip(clients, attempts, strict=True):
        assert client.parent is not None
        assert client.parent.span_id == attempt.context.span_id
        assert client.attributes["http.request.method"] == "POST"
        assert client.attributes["server.address"] == "127.0.0.1"
        assert KEY not in str(client.attributes)
    assert [c.attributes["http.response.status_code"] for c in clients] == [503, 200]
    # the metric agrees with the span
    assert h.metric("agentmesh_gateway_attempts_total", {"provider": "openai", "outcome": "ok"})


async def test_a_caller_going_away_mid_stream_is_a_cancelled_attempt(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(), done=True), hang_after=2))
    h = harness(one("openai", "m", fake.url), ENV)
    call = h.gateway.generate(ask())
    async for event in call:
        if type(event).__name__ == "TextDelta":
            break
    await call.aclose()
    (attempt,) = [s for s in h.spans.get_finished_spans() if s.name == "gateway.attempt"]
    assert attempt.attributes["gateway.outcome"] == "cancelled"


# --- structured output cut at max_tokens ------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_structured_output_cut_at_max_tokens_is_never_a_success(
    fake: FakeProvider, harness: Any, stream: bool
) -> None:
    if stream:
        cut = Stream(wire.sse(*wire.openai_text(('{"city": "Par',), finish="length"), done=True))
    else:
        cut = Reply(
            200,
            {
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": '{"city": "Par'},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4},
            },
        )
    fake.default = cut
    yaml = one("openai", "m", fake.url).rstrip("}\n") + f", stream: {str(stream).lower()}}}\n"
    h = harness(yaml, ENV)
    with pytest.raises(FailedPrecondition) as caught:
        await h.run(ask(config=config(response_schema=SCHEMA, max_tokens=4)))
    assert caught.value.reason == "STRUCTURED_OUTPUT_INVALID"
    assert "max_tokens" in caught.value.message


# --- providers' rate-limit headers ----------------------------------------------------------


async def test_an_exhausted_openai_request_budget_routes_around_the_deployment(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    spent = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}
    fake.push(Stream(OK.chunks, headers=spent))
    fake.default = Reply(429, wire.OPENAI_429, {"retry-after": "1"})
    fake2.default = OK
    h = harness(two(fake.url, fake2.url), ENV)
    assert finished(await h.run(ask())).deployment == "first"
    events = await h.run(ask())  # the headers said no request is left: no 429 is bought
    assert compact(events) == ["started", "delta", "finished"]
    assert finished(events).deployment == "second"
    assert len(fake.requests) == 1
    view = next(v for v in h.gateway.status() if v.deployment.name == "first")
    assert view.rpm_remaining == 0


async def test_an_anthropic_token_budget_below_the_request_waits_for_its_reset(
    fake: FakeProvider, harness: Any
) -> None:
    good = wire.named_sse(*wire.anthropic_text())
    h = harness(one("anthropic", "claude", fake.url), ENV)
    fake.push(Stream(good))
    await h.run(ask())  # warm: the reset below is 400 ms from the next answer
    low = {
        "anthropic-ratelimit-tokens-remaining": "3",
        "anthropic-ratelimit-tokens-reset": _later(0.4),
        "anthropic-ratelimit-requests-remaining": "99",
    }
    fake.push(Stream(good, headers=low), Stream(good))
    await h.run(ask())
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await h.run(ask())
    assert loop.time() - started >= 0.2  # slowed down until the provider's window reset
    assert compact(events) == ["started", "delta", "finished"]
    assert len(fake.requests) == 3
    # a reset far away: a caller that does not wait hears why at once
    fake.push(Stream(good, headers={**low, "anthropic-ratelimit-tokens-reset": _later(20)}))
    await h.run(ask())
    with pytest.raises(ResourceExhausted) as caught:
        await h.run(ask(fail_fast_on_rate_limit=True))
    assert caught.value.reason == "DEPLOYMENT_RATE_LIMITED"
    assert caught.value.retry_after is not None
    assert len(fake.requests) == 4


def _later(seconds: float) -> str:
    """An RFC 3339 time ``seconds`` from now, as Anthropic writes its resets."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
