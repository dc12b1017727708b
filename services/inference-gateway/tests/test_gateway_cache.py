"""The response cache: hits replayed as normal streams (cached, cost 0), misses, expiry, tenant
separation, the requests and streams never cached, per-request skip and refresh, metrics, and
two gateway replicas sharing one Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.calls import WEATHER_TOOL, ask, compact, config, finished, text_of
from agentmesh_gateway_fakes.redis import redis_url
from agentmesh_gateway_fakes.server import FakeProvider, Reply, Stream

from agentmesh_common import InvalidArgument
from agentmesh_gateway.cache import MemoryCache, cache_key
from agentmesh_gateway.cache_redis import RedisCache
from agentmesh_gateway.domain import CacheMode

KEY = "sk-cache-abcdefghijklmnop"
ENV = {"KEY": KEY}
OK = Stream(wire.sse(*wire.openai_text(), done=True))
ZERO = config(temperature=0)


def routes(url: str, *, ttl: float = 60, deterministic_only: bool = True) -> str:
    deployment = (
        f"{{provider: openai, model: m, base_url: '{url}', api_key_env: KEY,"
        " input_price_per_million: 1.0, output_price_per_million: 2.0}"
    )
    return f"""
routes:
  main:
    deployments: [{deployment}]
    cache: {{ttl_seconds: {ttl}, deterministic_only: {str(deterministic_only).lower()}}}
  plain:
    - {deployment}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_an_identical_deterministic_call_is_replayed_as_a_normal_free_stream(
    fake: FakeProvider, harness: Any
) -> None:
    fake.default = OK
    h = harness(routes(fake.url), ENV, cache=MemoryCache(1 << 20))
    first = await h.run(ask(config=ZERO, tenant="acme"))
    second = await h.run(ask(config=ZERO, tenant="acme"))
    assert len(fake.requests) == 1
    assert compact(second) == ["started", "delta", "finished"]
    assert text_of(second) == text_of(first) == "Expect mild weather in Paris tomorrow."
    hit, miss = finished(second), finished(first)
    assert hit.cached
    assert not miss.cached
    assert (hit.usage.prompt_tokens, hit.usage.completion_tokens) == (112, 8)
    assert miss.usage.cost_micros_usd > 0
    assert hit.usage.cost_micros_usd == 0
    assert (hit.provider, hit.deployment) == (miss.provider, miss.deployment)
    labels = {"route": "main"}
    assert h.metric("agentmesh_gateway_cache_requests_total", {**labels, "result": "hit"}) == 1
    assert h.metric("agentmesh_gateway_cache_requests_total", {**labels, "result": "miss"}) == 1
    written = h.metric("agentmesh_gateway_cache_written_bytes_total", labels)
    assert written > 0
    assert h.metric("agentmesh_gateway_cache_read_bytes_total", labels) == written
    assert h.metric("agentmesh_gateway_cache_size_bytes", {}) == written


async def test_tool_calls_and_structured_output_are_replayed_whole(
    fake: FakeProvider, harness: Any
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_tool(), done=True)))
    h = harness(routes(fake.url), ENV, cache=MemoryCache(1 << 20))
    call = ask(config=ZERO, tools=(WEATHER_TOOL,))
    first, second = await h.run(call), await h.run(call)
    assert finished(second).tool_calls == finished(first).tool_calls
    assert finished(second).tool_calls[0].arguments["location"] == "Paris, France"
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"messages": ask("And in Lyon?").messages},
        {"config": config(temperature=0, max_tokens=50)},
        {"config": config(temperature=0, response_schema={"type": "object"})},
        {"tools": (WEATHER_TOOL,)},
        {"tenant": "globex"},
        {"route": "plain"},
    ],
    ids=["messages", "generation-config", "schema", "tools", "other-tenant", "route-not-opted-in"],
)
async def test_anything_that_decides_the_answer_is_part_of_the_key(
    fake: FakeProvider, harness: Any, change: dict[str, Any]
) -> None:
    fake.default = OK
    h = harness(routes(fake.url), ENV, cache=MemoryCache(1 << 20))
    base = ask(config=ZERO, tenant="acme")
    await h.run(base)
    changed = ask(**{"config": ZERO, "tenant": "acme", **change})
    if changed.config.response_schema is not None:
        fake.push(Stream(wire.sse(*wire.openai_text(('{"a": 1}',)), done=True)))
    assert not finished(await h.run(changed)).cached
    assert len(fake.requests) == 2


async def test_an_answer_expires_after_its_ttl(fake: FakeProvider, harness: Any) -> None:
    fake.default = OK
    clock = Clock()
    h = harness(routes(fake.url, ttl=30), ENV, cache=MemoryCache(1 << 20, clock))
    await h.run(ask(config=ZERO))
    clock.now += 29
    assert finished(await h.run(ask(config=ZERO))).cached
    clock.now += 2
    assert not finished(await h.run(ask(config=ZERO))).cached
    assert len(fake.requests) == 2


async def test_the_byte_budget_evicts_the_least_recently_used(
    fake: FakeProvider, harness: Any
) -> None:
    fake.default = OK
    backend = MemoryCache(1 << 20)
    h = harness(routes(fake.url), ENV, cache=backend)
    await h.run(ask("one", config=ZERO))
    size = backend.bytes
    backend.max_bytes = 2 * size + size // 2  # room for two answers
    await h.run(ask("two", config=ZERO))
    await h.run(ask("one", config=ZERO))  # a hit: "one" is now the most recent
    await h.run(ask("three", config=ZERO))  # evicts "two"
    assert backend.bytes <= backend.max_bytes
    asked = len(fake.requests)
    assert finished(await h.run(ask("one", config=ZERO))).cached
    assert not finished(await h.run(ask("two", config=ZERO))).cached
    assert len(fake.requests) == asked + 1


async def test_random_requests_are_cached_only_when_the_route_says_so(
    fake: FakeProvider, harness: Any
) -> None:
    fake.default = OK
    random_call = ask(config=config(temperature=0.7))
    h = harness(routes(fake.url), ENV, cache=MemoryCache(1 << 20))
    await h.run(random_call)
    assert not finished(await h.run(random_call)).cached
    seeded = ask(config=config(temperature=0.7, seed=42))
    await h.run(seeded)
    assert finished(await h.run(seeded)).cached
    every = harness(routes(fake.url, deterministic_only=False), ENV, cache=MemoryCache(1 << 20))
    await every.run(random_call)
    assert finished(await every.run(random_call)).cached


async def test_errors_restarted_and_cancelled_streams_are_never_stored(
    fake: FakeProvider, harness: Any
) -> None:
    h = harness(routes(fake.url), ENV, cache=MemoryCache(1 << 20))
    fake.push(Reply(400, {"error": {"message": "bad", "type": "invalid_request_error"}}))
    with pytest.raises(InvalidArgument):
        await h.run(ask("error", config=ZERO))
    broken = wire.sse(*wire.openai_text()[:3]) + wire.sse(wire.OPENAI_MIDSTREAM_ERROR)
    fake.push(Stream(broken), OK)
    restarted = await h.run(ask("restart", config=ZERO))
    assert "restart" in compact(restarted)
    fake.push(Stream(OK.chunks, hang_after=2))
    call = h.gateway.generate(ask("cancel", config=ZERO))
    async for event in call:
        if type(event).__name__ == "TextDelta":
            break
    await call.aclose()
    fake.default = OK
    asked = len(fake.requests)
    for text in ("error", "restart", "cancel"):
        assert not finished(await h.run(ask(text, config=ZERO))).cached, text
    assert len(fake.requests) == asked + 3
    for text in ("error", "restart", "cancel"):  # the clean answers are stored now
        assert finished(await h.run(ask(text, config=ZERO))).cached, text


async def test_a_request_may_skip_or_refresh_the_cache(fake: FakeProvider, harness: Any) -> None:
    fake.default = OK
    h = harness(routes(fake.url), ENV, cache=MemoryCache(1 << 20))
    skipped = await h.run(ask(config=ZERO, cache=CacheMode.SKIP))
    assert not finished(skipped).cached
    assert not finished(await h.run(ask(config=ZERO))).cached, "SKIP stored nothing"
    assert finished(await h.run(ask(config=ZERO))).cached
    fake.push(Stream(wire.sse(*wire.openai_text(("Fresh answer.",)), done=True)))
    refreshed = await h.run(ask(config=ZERO, cache=CacheMode.REFRESH))
    assert not finished(refreshed).cached
    again = finished(await h.run(ask(config=ZERO)))
    assert again.cached
    assert again.text == "Fresh answer."
    assert len(fake.requests) == 3


@pytest.mark.parametrize("prefer_running", [True, False], ids=["running-redis", "throwaway"])
async def test_two_replicas_share_answers_through_redis(
    fake: FakeProvider, harness: Any, prefer_running: bool
) -> None:
    fake.default = OK
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"  # a shared Redis may hold others' keys
    with redis_url(prefer_running=prefer_running) as url:
        one, two = RedisCache(url), RedisCache(url)
        try:
            replica_a = harness(routes(fake.url, ttl=30), ENV, cache=one)
            replica_b = harness(routes(fake.url, ttl=30), ENV, cache=two)
            call = ask(config=ZERO, tenant=tenant)
            assert not finished(await replica_a.run(call)).cached
            hit = finished(await replica_b.run(call))
            assert hit.cached
            assert hit.text == "Expect mild weather in Paris tomorrow."
            assert len(fake.requests) == 1
            left = await two.ttl_ms(cache_key(call, "main"))
            assert 0 < left <= 30_000
            other = ask(config=ZERO, tenant=f"{tenant}-other")
            assert not finished(await replica_b.run(other)).cached
        finally:
            await one.aclose()
            await two.aclose()


async def test_an_unreachable_redis_is_a_miss_not_a_failed_call(
    fake: FakeProvider, harness: Any
) -> None:
    fake.default = OK
    backend = RedisCache("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        h = harness(routes(fake.url), ENV, cache=backend)
        assert finished(await h.run(ask(config=ZERO))).text.startswith("Expect")
        assert finished(await h.run(ask(config=ZERO))).text.startswith("Expect")
        assert len(fake.requests) == 2
    finally:
        await backend.aclose()
