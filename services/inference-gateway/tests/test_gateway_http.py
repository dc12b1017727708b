"""The OpenAI- and Anthropic-compatible HTTP API with the official SDKs as clients.

One gateway (the real composition root, in process, HTTP on port 0) in front of a fake
OpenAI-format provider, with a real memory service on SQLite resolving tenant API keys and
keeping the usage ledger. The SDKs talk to it exactly as they would to OpenAI or Anthropic.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anthropic
import grpc.aio
import httpx
import openai
import pytest
import pytest_asyncio
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.server import FakeProvider, Reply, Stream
from agentmesh_gateway_fakes.service import RunningGateway, running_gateway

from agentmesh.common.v1 import operations_pb2
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY, SettingsError, load_settings
from agentmesh_gateway.settings import GatewaySettings
from agentmesh_memory.testing import memory_settings, start_memory

pytestmark = pytest.mark.asyncio(loop_scope="module")

OK = Stream(wire.sse(*wire.openai_text(), done=True))
ANSWER = "Expect mild weather in Paris tomorrow."
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
    "required": ["city", "temp_c"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["location"],
        },
    },
}
ASK = [{"role": "user", "content": "What will the weather be like in Paris tomorrow?"}]


def routes(url: str) -> str:
    deployment = (
        f"provider: openai_compatible, model: fake-1, base_url: '{url}/v1', max_retries: 0,"
        " input_price_per_million: 1.0, output_price_per_million: 2.0"
    )
    return f"""
tenants:
  tight: {{rpm: 1}}
routes:
  main:
    - {{name: fake, {deployment}}}
  cached:
    deployments:
      - {{name: fake-cached, {deployment}}}
    cache: {{ttl_seconds: 60}}
"""


@dataclass
class Setup:
    gateway: RunningGateway
    fake: FakeProvider
    memory: memory_pb2_grpc.MemoryServiceStub
    keys: dict[str, str]  # tenant -> API key

    def openai(self, tenant: str = "acme", key: str | None = None) -> openai.AsyncOpenAI:
        api_key = key if key is not None else self.keys[tenant]
        return openai.AsyncOpenAI(base_url=self.gateway.base_url, api_key=api_key, max_retries=0)

    def anthropic(self, tenant: str = "acme", key: str | None = None) -> anthropic.AsyncAnthropic:
        api_key = key if key is not None else self.keys[tenant]
        base = self.gateway.base_url.removesuffix("/v1")
        return anthropic.AsyncAnthropic(base_url=base, api_key=api_key, max_retries=0)

    async def executions(self, tenant: str) -> list[memory_pb2.Execution]:
        reply = await self.memory.ListExecutions(
            memory_pb2.ListExecutionsRequest(page_size=1000),
            metadata=((TENANT_METADATA_KEY, tenant),),
            timeout=10,
        )
        return list(reply.executions)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    tmp = tmp_path_factory.mktemp("http")
    memory = await start_memory(
        memory_settings(f"sqlite+aiosqlite:///{tmp / 'memory.db'}", migrate_on_start="true")
    )
    fake = await FakeProvider().start()
    fake.default = OK
    channel = grpc.aio.insecure_channel(memory.address)
    stub = memory_pb2_grpc.MemoryServiceStub(channel)
    keys = {}
    for tenant in ("acme", "globex", "tight"):
        reply = await stub.CreateApiKey(
            memory_pb2.CreateApiKeyRequest(display_name=tenant),
            metadata=((TENANT_METADATA_KEY, tenant),),
            timeout=10,
        )
        keys[tenant] = reply.secret
    try:
        async with running_gateway(
            routes(fake.url),
            tmp,
            AGENTMESH_GATEWAY_HTTP_PORT="0",
            AGENTMESH_GATEWAY_MEMORY_TARGET=memory.address,
        ) as gateway:
            yield Setup(gateway, fake, stub, keys)
    finally:
        await channel.close()
        await fake.stop()
        await memory.stop()


# --- OpenAI SDK -------------------------------------------------------------------------------


async def test_openai_sdk_chat_completion_with_usage_and_the_route_as_model(setup: Setup) -> None:
    client = setup.openai()
    reply = await client.chat.completions.create(model="main", messages=ASK, seed=7, stop=["##"])
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == "main"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (112, 8)
    sent = setup.fake.requests[-1].body
    assert (sent["model"], sent["seed"], sent["stop"]) == ("fake-1", 7, ["##"])
    models = await client.models.list()
    assert [m.id for m in models.data] == ["main", "cached"]


async def test_openai_sdk_streams_text_and_the_usage_chunk(setup: Setup) -> None:
    client = setup.openai()
    stream = await client.chat.completions.create(
        model="main", messages=ASK, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == ANSWER
    assert finish == "stop"
    assert usage is not None
    assert usage.total_tokens == 120


async def test_openai_sdk_tool_calls_streamed_and_whole(setup: Setup) -> None:
    client = setup.openai()
    tool_stream = Stream(wire.sse(*wire.openai_tool(), done=True))
    setup.fake.push(tool_stream, tool_stream)
    reply = await client.chat.completions.create(
        model="main", messages=ASK, tools=[WEATHER], tool_choice="auto"
    )
    (call,) = reply.choices[0].message.tool_calls or []
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {  # type: ignore[union-attr]
        "location": "Paris, France",
        "unit": "celsius",
    }
    assert setup.fake.requests[-1].body["tools"][0]["function"]["name"] == "get_weather"
    stream = await client.chat.completions.create(
        model="main",
        messages=ASK,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    fragments: list[str] = []
    names = []
    async for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or ():
                names.append(tc.function.name) if tc.function and tc.function.name else None
                fragments.append(tc.function.arguments or "" if tc.function else "")
    assert names == ["get_weather"]
    assert json.loads("".join(fragments))["location"] == "Paris, France"
    assert setup.fake.requests[-1].body["tool_choice"] == "required"


async def test_openai_sdk_json_schema_response_format(setup: Setup) -> None:
    answer = '{"city": "Paris", "temp_c": 18}'
    setup.fake.push(Stream(wire.sse(*wire.openai_text((answer,)), done=True)))
    reply = await setup.openai().chat.completions.create(
        model="main",
        messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": SCHEMA}},
    )
    assert json.loads(reply.choices[0].message.content or "") == {"city": "Paris", "temp_c": 18}
    sent = setup.fake.requests[-1].body["response_format"]
    assert sent["json_schema"]["schema"] == SCHEMA


async def test_openai_sdk_errors_are_its_typed_exceptions(setup: Setup) -> None:
    with pytest.raises(openai.AuthenticationError) as bad_key:
        await setup.openai(key="sk-not-a-key").chat.completions.create(model="main", messages=ASK)
    assert bad_key.value.code == "api_key_invalid"
    async with httpx.AsyncClient() as http:
        anonymous = await http.get(setup.gateway.base_url + "/models")
        raw = await http.post(
            setup.gateway.base_url + "/chat/completions",
            content=b"{not json",
            headers={"authorization": f"Bearer {setup.keys['acme']}"},
        )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "api_key_missing"
    assert raw.status_code == 400
    assert raw.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as unknown:
        await setup.openai().chat.completions.create(model="gpt-9", messages=ASK)
    assert "gpt-9" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await setup.openai().chat.completions.create(model="main", messages=ASK, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as schema:
        await setup.openai().chat.completions.create(
            model="main",
            messages=ASK,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "w", "schema": {"type": 3}},
            },
        )
    assert schema.value.param == "response_format.json_schema.schema"


async def test_a_tenant_over_its_rate_limit_gets_the_sdks_rate_limit_error(setup: Setup) -> None:
    client = setup.openai("tight")
    await client.chat.completions.create(model="main", messages=ASK)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(model="main", messages=ASK)
    assert int(limited.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError) as again:
        await setup.anthropic("tight").messages.create(model="main", max_tokens=64, messages=ASK)
    assert again.value.response.headers["retry-after"]


async def test_a_client_that_disconnects_cancels_the_upstream_request(setup: Setup) -> None:
    setup.fake.push(Stream(wire.sse(*wire.openai_text(), done=True), hang_after=2))
    before = len(setup.fake.disconnected_at)
    stream = await setup.openai().chat.completions.create(model="main", messages=ASK, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    closed_at = time.monotonic()
    await stream.close()

    async def upstream_gone() -> bool:
        return len(setup.fake.disconnected_at) > before

    await eventually(upstream_gone, 5)
    assert setup.fake.disconnected_at[-1] - closed_at < 1.0


async def test_a_failure_after_output_ends_the_stream_with_an_error_not_silently(
    setup: Setup,
) -> None:
    partial = wire.sse(*wire.openai_text()[:3])
    setup.fake.push(Stream(partial, cut_after=len(partial)))
    stream = await setup.openai().chat.completions.create(model="main", messages=ASK, stream=True)
    pieces: list[str] = []

    async def read_all() -> None:
        async for chunk in stream:
            pieces.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError) as cut:
        await read_all()
    assert "".join(pieces) == "Expect mild"
    assert "streamed" in cut.value.message


# --- Anthropic SDK ---------------------------------------------------------------------------


async def test_anthropic_sdk_messages_whole_and_streamed(setup: Setup) -> None:
    client = setup.anthropic()
    message = await client.messages.create(
        model="main", max_tokens=64, system="Be brief.", messages=ASK
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == ANSWER
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (112, 8)
    assert setup.fake.requests[-1].body["messages"][0] == {"role": "system", "content": "Be brief."}
    async with client.messages.stream(model="main", max_tokens=64, messages=ASK) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == ANSWER
    assert final.usage.output_tokens == 8
    assert final.usage.input_tokens == 112


async def test_anthropic_sdk_tool_use_and_tool_results(setup: Setup) -> None:
    setup.fake.push(Stream(wire.sse(*wire.openai_tool(), done=True)))
    tool = {
        "name": "get_weather",
        "description": "Get the weather forecast for a city",
        "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
    }
    client = setup.anthropic()
    async with client.messages.stream(
        model="main",
        max_tokens=64,
        messages=ASK,
        tools=[tool],  # type: ignore[list-item]
    ) as stream:
        final = await stream.get_final_message()
    (use,) = [block for block in final.content if block.type == "tool_use"]
    assert use.name == "get_weather"
    assert use.input == {"location": "Paris, France", "unit": "celsius"}
    assert final.stop_reason == "tool_use"
    reply = await client.messages.create(
        model="main",
        max_tokens=64,
        messages=[
            *ASK,
            {
                "role": "assistant",
                "content": [use.model_dump(include={"type", "id", "name", "input"})],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}],
            },
        ],  # type: ignore[list-item]
    )
    assert reply.content[0].text == ANSWER  # type: ignore[union-attr]
    sent = setup.fake.requests[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "content": "18C", "tool_call_id": use.id}


async def test_anthropic_sdk_errors(setup: Setup) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        await setup.anthropic(key="bad").messages.create(model="main", max_tokens=8, messages=ASK)
    with pytest.raises(anthropic.BadRequestError) as bad:
        await setup.anthropic().messages.create(
            model="main", max_tokens=8, messages=ASK, extra_body={"temperature": 3}
        )
    assert "temperature" in bad.value.message
    with pytest.raises(anthropic.NotFoundError):
        await setup.anthropic().messages.create(model="claude-9", max_tokens=8, messages=ASK)


# --- keys, spend and the cache ---------------------------------------------------------------


async def test_every_call_is_in_the_ledger_under_its_tenant_and_a_cache_hit_costs_nothing(
    setup: Setup,
) -> None:
    client = setup.openai("globex")
    asked = len(setup.fake.requests)
    first = await client.chat.completions.create(model="cached", messages=ASK, temperature=0)
    second = await client.chat.completions.create(model="cached", messages=ASK, temperature=0)
    assert len(setup.fake.requests) == asked + 1, "the identical deterministic call was a hit"
    assert second.choices[0].message.content == first.choices[0].message.content == ANSWER
    assert second.usage == first.usage
    assert (first.model_extra or {})["agentmesh"]["cached"] is False
    assert (second.model_extra or {})["agentmesh"]["cached"] is True
    other = await setup.openai("acme").chat.completions.create(
        model="cached", messages=ASK, temperature=0
    )
    assert (other.model_extra or {})["agentmesh"]["cached"] is False, "keys are tenant-scoped"
    refreshed = await client.with_options(
        default_headers={"cache-control": "no-cache"}
    ).chat.completions.create(model="cached", messages=ASK, temperature=0)
    assert (refreshed.model_extra or {})["agentmesh"]["cached"] is False
    assert len(setup.fake.requests) == asked + 3

    async def recorded() -> bool:
        return len(await setup.executions("globex")) == 3

    await eventually(recorded)
    rows = await setup.executions("globex")
    assert [e.route for e in rows] == ["cached"] * 3
    assert [e.usage.cost_micros_usd > 0 for e in rows] == [True, False, True]
    assert all(e.outcome == memory_pb2.EXECUTION_OUTCOME_SUCCEEDED for e in rows)
    usage = await setup.memory.GetUsage(
        memory_pb2.GetUsageRequest(group_by=operations_pb2.USAGE_GROUPING_TENANT),
        metadata=((TENANT_METADATA_KEY, "globex"),),
        timeout=10,
    )
    assert usage.rows[0].calls == 3
    assert usage.total.cost_micros_usd == 2 * rows[0].usage.cost_micros_usd


async def test_the_http_api_needs_a_memory_target_unless_it_is_open() -> None:
    with pytest.raises(SettingsError, match="MEMORY_TARGET"):
        load_settings(GatewaySettings, {"AGENTMESH_GATEWAY_HTTP_PORT": "0"})
    open_api = load_settings(
        GatewaySettings, {"AGENTMESH_GATEWAY_HTTP_PORT": "0", "AGENTMESH_GATEWAY_HTTP_AUTH": "none"}
    )
    assert open_api.memory_target is None
    assert load_settings(GatewaySettings, {"AGENTMESH_GATEWAY_HTTP_PORT": "off"}).http_port is None


async def test_an_open_http_api_serves_without_keys(tmp_path: Path) -> None:
    fake = await FakeProvider().start()
    fake.default = OK
    async with running_gateway(
        routes(fake.url),
        tmp_path,
        AGENTMESH_GATEWAY_HTTP_PORT="0",
        AGENTMESH_GATEWAY_HTTP_AUTH="none",
    ) as gateway:
        client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        reply = await client.chat.completions.create(model="main", messages=ASK)
        assert reply.choices[0].message.content == ANSWER
        fake.push(Reply(401, wire.openai_401("sk-upstream-abcdefgh")))
        with pytest.raises(openai.APIStatusError) as upstream:
            await client.chat.completions.create(model="main", messages=ASK)
        assert upstream.value.status_code == 502  # the gateway's key, not the caller's
    await fake.stop()


async def test_a_revoked_key_is_refused_within_a_second_though_it_was_cached(
    setup: Setup,
) -> None:
    """Issue 16, finding 8: the key cache drops a key once the memory service revokes it."""
    created = await setup.memory.CreateApiKey(
        memory_pb2.CreateApiKeyRequest(display_name="soon revoked"),
        metadata=((TENANT_METADATA_KEY, "acme"),),
        timeout=10,
    )
    headers = {"authorization": f"Bearer {created.secret}"}
    async with httpx.AsyncClient() as http:
        first = await http.get(setup.gateway.base_url + "/models", headers=headers)
        assert first.status_code == 200  # resolved, and now cached for 30 s
        await setup.memory.DeleteApiKey(
            memory_pb2.DeleteApiKeyRequest(name=created.api_key.name),
            metadata=((TENANT_METADATA_KEY, "acme"),),
            timeout=10,
        )
        revoked = time.monotonic()
        deadline = revoked + 1.0
        while True:
            answer = await http.get(setup.gateway.base_url + "/models", headers=headers)
            if answer.status_code != 200:
                break
            assert time.monotonic() < deadline, "the revoked key still works after 1 s"
            await asyncio.sleep(0.02)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "api_key_invalid"
    print(f"gateway refused the revoked key {time.monotonic() - revoked:.3f} s after revoking")
