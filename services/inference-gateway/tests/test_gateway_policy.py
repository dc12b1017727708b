"""The failure policy against fakes injecting faults: retries honouring provider hints,
fallback, fail-fast, context-length fallback, circuit breaker, mid-stream failures (restart
or typed error), truncation, malformed chunks, slow first token, structured output."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.calls import ask, compact, config, finished, one, text_of
from agentmesh_gateway_fakes.server import FakeProvider, Reply, Stream

from agentmesh_common import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from agentmesh_gateway.domain import AttemptFailed, MidStreamPolicy, Restart
from agentmesh_gateway.limits import CircuitState

KEY = "sk-policy-abcdefghijklmnop"
ENV = {"KEY": KEY}
OK = Stream(wire.sse(*wire.openai_text(), done=True))


def two(
    url1: str, url2: str, *, retries: int = 2, extra1: str = "", extra2: str = "", head: str = ""
) -> str:
    return f"""
{head}
routes:
  main:
    - name: first
      provider: openai
      model: gpt-4.1-mini
      base_url: {url1}
      api_key_env: KEY
      max_retries: {retries}
      priority: 0
{extra1}
    - name: second
      provider: openai
      model: gpt-4.1
      base_url: {url2}
      api_key_env: KEY
      priority: 1
{extra2}
"""


def failures(events: list[Any]) -> list[AttemptFailed]:
    return [e for e in events if isinstance(e, AttemptFailed)]


async def test_429_retry_after_ms_is_honoured_then_the_same_deployment_answers(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(429, wire.OPENAI_429, {"retry-after-ms": "120"}), OK)
    h = harness(two(fake.url, fake2.url), ENV)
    started = time.monotonic()
    events = await h.run(ask())
    assert time.monotonic() - started >= 0.12
    assert compact(events) == ["started", "failed", "started", "delta", "finished"]
    (failed,) = failures(events)
    assert failed.retryable
    assert not failed.will_fall_back
    assert failed.reason == "RATE_LIMITED"
    assert failed.code == "RESOURCE_EXHAUSTED"
    assert finished(events).deployment == "first"
    assert not fake2.requests


async def test_retry_after_seconds_header_and_500_503_are_retried(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(
        Reply(500, wire.OPENAI_500),
        Reply(503, wire.OPENAI_503, {"retry-after": "0.05"}),
        OK,
    )
    h = harness(two(fake.url, fake2.url), ENV)
    events = await h.run(ask())
    assert [f.reason for f in failures(events)] == ["SERVER_ERROR", "OVERLOADED"]
    assert finished(events).deployment == "first"
    assert len(fake.requests) == 3


async def test_anthropic_529_is_retried(fake: FakeProvider, harness: Any) -> None:
    fake.push(
        Reply(529, wire.ANTHROPIC_529, {"retry-after": "0"}),
        Stream(wire.named_sse(*wire.anthropic_text())),
    )
    yaml = one("anthropic", "claude-sonnet-4-5", fake.url)
    events = await harness(yaml, ENV).run(ask())
    assert failures(events)[0].reason == "OVERLOADED"
    assert text_of(events) == "Expect mild weather in Paris tomorrow."


async def test_gemini_retry_info_delay_is_honoured(fake: FakeProvider, harness: Any) -> None:
    fake.push(Reply(429, wire.GEMINI_429), Stream(wire.sse(*wire.GEMINI_TEXT, crlf=True)))
    yaml = one("gemini", "gemini-2.5-flash", fake.url)
    started = time.monotonic()
    events = await harness(yaml, ENV).run(ask())
    assert time.monotonic() - started >= 0.05
    assert failures(events)[0].reason == "RATE_LIMITED"
    assert finished(events).usage.prompt_tokens == 48


async def test_after_the_retries_the_next_deployment_answers(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.default = Reply(503, wire.OPENAI_503)
    fake2.push(OK)
    h = harness(two(fake.url, fake2.url, retries=1), ENV)
    events = await h.run(ask(session="sessions/s1", agent="planner", tenant="acme"))
    assert len(fake.requests) == 2
    falls = failures(events)
    assert [f.will_fall_back for f in falls] == [False, True]
    done = finished(events)
    assert (done.deployment, done.model) == ("second", "gpt-4.1")
    assert h.metric("agentmesh_gateway_fallbacks_total", {"route": "main"}) == 1


async def test_a_long_retry_hint_falls_back_at_once(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(429, wire.OPENAI_429, {"retry-after": "34"}))
    fake2.push(OK)
    events = await harness(two(fake.url, fake2.url), ENV).run(ask())
    assert len(fake.requests) == 1
    assert finished(events).deployment == "second"


@pytest.mark.parametrize(
    ("status", "body", "error", "reason"),
    [
        # (a refused key is not here: it falls back, see test_gateway_findings.py)
        (429, wire.OPENAI_QUOTA, ResourceExhausted, "QUOTA_EXHAUSTED"),
        (
            400,
            {
                "error": {
                    "message": "Invalid 'temperature'",
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": "decimal_above_max_value",
                }
            },
            InvalidArgument,
            "PROVIDER_REJECTED_REQUEST",
        ),
    ],
)
async def test_non_retryable_errors_fail_fast_with_the_provider_reason(
    fake: FakeProvider,
    fake2: FakeProvider,
    harness: Any,
    status: int,
    body: Any,
    error: type[Exception],
    reason: str,
) -> None:
    fake.push(Reply(status, body))
    h = harness(two(fake.url, fake2.url), ENV)
    with pytest.raises(error) as caught:
        await h.run(ask())
    assert caught.value.reason == reason  # type: ignore[attr-defined]
    assert len(fake.requests) == 1
    assert not fake2.requests
    assert KEY not in str(caught.value)
    assert KEY[-4:] + "." not in str(caught.value)


async def test_context_length_error_falls_back_to_a_larger_window(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(400, wire.OPENAI_CONTEXT))
    fake2.push(OK)
    yaml = two(
        fake.url,
        fake2.url,
        extra1="      context_window: 128000",
        extra2="      context_window: 1000000",
    )
    events = await harness(yaml, ENV).run(ask())
    assert failures(events)[0].reason == "CONTEXT_LENGTH_EXCEEDED"
    assert failures(events)[0].will_fall_back
    assert finished(events).deployment == "second"


async def test_context_length_error_without_a_larger_window_fails_fast(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(400, wire.ANTHROPIC_CONTEXT))
    yaml = two(
        fake.url,
        fake2.url,
        extra1="      context_window: 200000",
        extra2="      context_window: 100000",
    )
    with pytest.raises(InvalidArgument) as caught:
        await harness(yaml, ENV).run(ask())
    assert caught.value.reason == "CONTEXT_LENGTH_EXCEEDED"
    assert "prompt is too long" in caught.value.message
    assert not fake2.requests


async def test_circuit_opens_skips_the_deployment_then_probes_after_cooldown(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    head = "circuit_failure_threshold: 2\ncircuit_cooldown_seconds: 0.3"
    fake.default = Reply(500, wire.OPENAI_500)
    fake2.default = OK
    h = harness(two(fake.url, fake2.url, retries=0, head=head), ENV)
    await h.run(ask())
    await h.run(ask())
    assert len(fake.requests) == 2
    (view,) = h.gateway.status(route="main")[:1]
    assert view.circuit is CircuitState.OPEN
    assert view.consecutive_failures == 2
    assert h.metric("agentmesh_gateway_circuit_state", {"deployment": "first"}) == 2
    events = await h.run(ask())  # skipped: straight to the second deployment
    assert compact(events) == ["started", "delta", "finished"]
    assert len(fake.requests) == 2
    await asyncio.sleep(0.3)
    fake.push(OK)
    events = await h.run(ask())  # the probe goes to the first deployment and closes it
    assert finished(events).deployment == "first"
    assert h.gateway.status(route="main")[0].circuit is CircuitState.CLOSED


def midstream(*cut: bytes, **kw: Any) -> Stream:
    return Stream(list(cut), **kw)


async def test_error_event_inside_a_200_stream_restarts_on_the_next_attempt(
    fake: FakeProvider, harness: Any
) -> None:
    partial = wire.sse(*wire.openai_text()[:3]) + wire.sse(wire.OPENAI_MIDSTREAM_ERROR)
    fake.push(Stream(partial), OK)
    yaml = one("openai", "m", fake.url)
    events = await harness(yaml, ENV).run(ask())
    assert compact(events) == [
        "started",
        "delta",
        "failed",
        "restart",
        "started",
        "delta",
        "finished",
    ]
    failed = failures(events)[0]
    assert failed.reason == "STREAM_ERROR"
    assert failed.streamed_tokens > 0
    restart = next(e for e in events if isinstance(e, Restart))
    assert restart.next_attempt == 2
    assert finished(events).text == "Expect mild weather in Paris tomorrow."


async def test_mid_stream_failure_with_error_policy_says_how_much_was_streamed(
    fake: FakeProvider, harness: Any
) -> None:
    partial = wire.sse(*wire.openai_text()[:3])
    fake.push(Stream(partial, cut_after=len(partial)), OK)
    yaml = one("openai", "m", fake.url)
    h = harness(yaml, ENV)
    events: list[Any] = []

    async def consume() -> None:
        async for event in h.gateway.generate(ask(mid_stream=MidStreamPolicy.ERROR)):
            events.append(event)

    with pytest.raises(Unavailable) as caught:
        await consume()
    assert caught.value.reason == "STREAM_TRUNCATED"
    assert caught.value.metadata["streamed_tokens"] == "3"
    assert "after 3 tokens were streamed" in caught.value.message
    assert text_of(events) == "Expect mild"
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("provider", "model", "stream"),
    [
        (
            "anthropic",
            "claude",
            Stream(wire.named_sse(*wire.anthropic_text()[:4], wire.ANTHROPIC_OVERLOADED_EVENT)),
        ),
        (
            "gemini",
            "gemini-2.5-flash",
            Stream(wire.sse(wire.GEMINI_TEXT[0], wire.GEMINI_MIDSTREAM_ERROR, crlf=True)),
        ),
        (
            "ollama",
            "llama3.2",
            Stream(wire.ndjson(*wire.OLLAMA_TEXT[:2], wire.OLLAMA_MIDSTREAM_ERROR)),
        ),
        ("openai", "m", Stream([*wire.sse(*wire.openai_text()[:3]), b"data: {not json\n\n"])),
        # no finish chunk and no [DONE] (with the finish chunk the answer is complete)
        ("openai", "m", Stream(wire.sse(*wire.openai_text()[:-2]))),
        (
            "gemini",
            "gemini-2.5-flash",
            Stream(wire.sse(wire.GEMINI_TEXT[0], crlf=True)),
        ),  # no finishReason
        ("ollama", "llama3.2", Stream(wire.ndjson(*wire.OLLAMA_TEXT[:2]))),  # no done:true
    ],
)
async def test_every_provider_turns_a_broken_stream_into_a_restart_not_a_truncation(
    fake: FakeProvider, harness: Any, provider: str, model: str, stream: Stream
) -> None:
    good = {
        "anthropic": Stream(wire.named_sse(*wire.anthropic_text())),
        "gemini": Stream(wire.sse(*wire.GEMINI_TEXT, crlf=True)),
        "ollama": Stream(wire.ndjson(*wire.OLLAMA_TEXT)),
        "openai": OK,
    }[provider]
    fake.push(stream, good)
    yaml = one(provider, model, fake.url)
    events = await harness(yaml, ENV).run(ask())
    assert compact(events)[-4:] == ["failed", "restart", "started", "delta"] or compact(events)[
        -5:-1
    ] == ["failed", "restart", "started", "delta"]
    assert failures(events)[0].retryable
    assert finished(events).text.startswith("Expect mild")


async def test_slow_first_token_times_out_and_falls_back(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(), done=True), first_delay=2.0))
    fake2.push(OK)
    yaml = two(fake.url, fake2.url, retries=0, extra1="      timeout: 0.2")
    started = time.monotonic()
    events = await harness(yaml, ENV).run(ask())
    assert time.monotonic() - started < 1.5
    assert failures(events)[0].reason == "TIMEOUT"
    assert finished(events).deployment == "second"


async def test_tool_arguments_that_are_not_json_are_retried(
    fake: FakeProvider, harness: Any
) -> None:
    bad = wire.openai_tool()
    del bad[5]  # the last fragment, with the closing brace, never arrives
    fake.push(Stream(wire.sse(*bad, done=True)), Stream(wire.sse(*wire.openai_tool(), done=True)))
    yaml = one("openai", "m", fake.url)
    events = await harness(yaml, ENV).run(ask())
    assert failures(events)[0].reason == "MALFORMED_RESPONSE"
    assert finished(events).tool_calls[0].arguments["unit"] == "celsius"


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
    "required": ["city", "temp_c"],
}


def json_reply(text: str) -> Stream:
    return Stream(wire.sse(*wire.openai_text((text,)), done=True))


async def test_structured_output_is_passed_natively_and_validated(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(json_reply('{"city": "Paris", "temp_c": 18}'))
    yaml = one("openai", "m", fake.url)
    done = finished(await harness(yaml, ENV).run(ask(config=config(response_schema=SCHEMA))))
    assert done.structured_output == {"city": "Paris", "temp_c": 18}
    assert fake.requests[0].body["response_format"]["json_schema"]["schema"] == SCHEMA


async def test_invalid_structured_output_is_retried_once_then_a_typed_error(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(json_reply('{"city": "Paris"}'), json_reply('{"city": "Paris", "temp_c": 18}'))
    fake.push(json_reply("not json"), json_reply('{"city": 3, "temp_c": 1}'))
    yaml = one("openai", "m", fake.url)
    h = harness(yaml, ENV)
    events = await h.run(ask(config=config(response_schema=SCHEMA)))
    assert "restart" in compact(events)
    assert finished(events).structured_output == {"city": "Paris", "temp_c": 18}
    with pytest.raises(FailedPrecondition) as caught:
        await h.run(ask(config=config(response_schema=SCHEMA)))
    assert caught.value.reason == "STRUCTURED_OUTPUT_INVALID"
    assert len(fake.requests) == 4


async def test_answers_that_missed_the_schema_report_the_tokens_they_used(
    fake: FakeProvider, harness: Any
) -> None:
    """Issue 16, finding 12: refused answers were paid for; the caller must be able to bill
    them (a session that fails after them reported empty usage)."""
    fake.push(json_reply("not json"), json_reply('{"city": 3, "temp_c": 1}'))
    h = harness(one("openai", "m", fake.url), ENV)
    seen: list[Any] = []

    async def consume() -> None:
        async for event in h.gateway.generate(ask(config=config(response_schema=SCHEMA))):
            seen.append(event)

    with pytest.raises(FailedPrecondition):
        await consume()
    failed = failures(seen)
    assert [f.reason for f in failed] == ["STRUCTURED_OUTPUT_INVALID"] * 2
    for attempt in failed:
        assert attempt.usage is not None
        assert attempt.usage.prompt_tokens > 0
        assert attempt.usage.completion_tokens > 0


async def test_gemini_and_ollama_get_the_schema_natively_anthropic_by_instruction(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(
        Stream(
            wire.sse(
                *[
                    wire.GEMINI_TEXT[1].replace(
                        " weather in Paris tomorrow: around 18°C with light clouds.",
                        '{\\"city\\": \\"Paris\\", \\"temp_c\\": 18}',
                    )
                ],
                crlf=True,
            )
        ),
    )
    yaml = one("gemini", "g", fake.url)
    done = finished(await harness(yaml, ENV).run(ask(config=config(response_schema=SCHEMA))))
    assert done.structured_output == {"city": "Paris", "temp_c": 18}
    generation = fake.requests[0].body["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    assert generation["responseJsonSchema"] == SCHEMA


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"temperature": 2.5}, "config.temperature"),
        ({"top_p": 1.5}, "config.top_p"),
        ({"presence_penalty": -3.0}, "config.presence_penalty"),
        ({"max_tokens": 0}, "config.max_tokens"),
        ({"response_schema": {"type": 12}}, "config.response_schema"),
    ],
)
async def test_out_of_range_config_is_invalid_argument(
    fake: FakeProvider, harness: Any, values: dict[str, Any], field: str
) -> None:
    yaml = one("openai", "m", fake.url)
    with pytest.raises(InvalidArgument) as caught:
        await harness(yaml, ENV).run(ask(config=config(**values)))
    assert [v.field for v in caught.value.violations] == [field]
    assert not fake.requests


async def test_parameters_a_provider_refuses_are_rejected_before_the_call(
    fake: FakeProvider, harness: Any
) -> None:
    yaml = one("anthropic", "c", fake.url)
    with pytest.raises(InvalidArgument, match="temperature between 0 and 1"):
        await harness(yaml, ENV).run(ask(config=config(temperature=1.5)))
    yaml = one("openai", "m", fake.url)
    with pytest.raises(InvalidArgument, match="at most 4 stop"):
        await harness(yaml, ENV).run(ask(config=config(stop=("a", "b", "c", "d", "e"))))
    assert not fake.requests


async def test_closing_the_call_between_deltas_closes_the_upstream_at_once(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(), done=True), hang_after=2))
    h = harness(one("openai", "m", fake.url), ENV)
    call = h.gateway.generate(ask())
    async for event in call:
        if type(event).__name__ == "TextDelta":
            break  # suspended at a yield, upstream still open
    closed_at = time.monotonic()
    await call.aclose()
    for _ in range(100):
        if fake.disconnected_at:
            break
        await asyncio.sleep(0.005)
    assert fake.disconnected_at
    assert fake.disconnected_at[0] - closed_at < 0.1


async def test_a_revoked_key_among_several_is_skipped_for_the_next_key(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    fake.push(Reply(401, wire.openai_401("sk-revoked-aaaaaaaaaa")), OK)
    yaml = f"""
routes:
  main:
    - {{provider: openai, model: m, base_url: '{fake.url}', api_key_env: [OLD, NEW]}}
    - {{provider: openai, model: m, base_url: '{fake2.url}', api_key_env: NEW, priority: 1}}
"""
    h = harness(yaml, {"OLD": "sk-revoked-aaaaaaaaaa", "NEW": "sk-current-bbbbbbbbbb"})
    events = await h.run(ask())
    assert failures(events)[0].reason == "PROVIDER_AUTH_FAILED"
    assert finished(events).text == "Expect mild weather in Paris tomorrow."
    used = [r.headers["Authorization"] for r in fake.requests]
    assert used == ["Bearer sk-revoked-aaaaaaaaaa", "Bearer sk-current-bbbbbbbbbb"]
    assert not fake2.requests
    # with every key refused the deployment is skipped and the route falls back
    fake.push(Reply(401, wire.OPENAI_500), Reply(401, wire.OPENAI_500))
    fake2.push(OK)
    events = await h.run(ask())
    assert finished(events).text == "Expect mild weather in Paris tomorrow."
    assert len(fake2.requests) == 1


async def test_the_locality_preference_picks_local_or_online_deployments_first(
    fake: FakeProvider, fake2: FakeProvider, harness: Any
) -> None:
    """A user's local/online setting reorders a route: deployments of the preferred locality
    are tried first, the others stay as fallback; without a preference, priority rules."""
    from dataclasses import replace

    from agentmesh_gateway.domain import Locality

    fake.default = OK
    fake2.default = OK
    h = harness(two(fake.url, fake2.url, extra2="      locality: local"), ENV)
    table = h.gateway.table
    assert [d.locality for d in table.routes["main"]] == ["online", "local"]
    plain = ask()
    choices = ((None, "first"), (Locality.LOCAL, "second"), (Locality.ONLINE, "first"))
    for prefer, answering in choices:
        events = await h.run(replace(plain, prefer=prefer))
        assert finished(events).deployment == answering, prefer
    # The preferred deployment failing falls back to the other locality.
    fake2.default = Reply(503, wire.OPENAI_503)
    events = await h.run(replace(plain, prefer=Locality.LOCAL))
    assert finished(events).deployment == "first"
