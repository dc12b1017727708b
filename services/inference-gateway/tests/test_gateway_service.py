"""The gateway's gRPC API served through its composition root on port 0: Generate events,
error statuses, cancellation closing the upstream request, 100 concurrent streams, the local
runner, ListModels / GetProviderStatus / CountTokens, and secrets never leaking."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.server import FakeProvider, Reply, Stream
from agentmesh_gateway_fakes.service import FakeRunner, fake_runner, running_gateway
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from agentmesh.common.v1 import generation_pb2, messages_pb2, operations_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_common import TENANT_METADATA_KEY, JsonFormatter

KEY = "sk-live-SECRETSECRETSECRET0042"


def routes(url: str, url2: str = "http://127.0.0.1:9", *, extra: str = "") -> str:
    return f"""
tenants:
  limited: {{rpm: 1}}
routes:
  main:
    - name: primary
      provider: openai
      model: gpt-4.1-mini
      base_url: {url}
      api_key_env: GW_TEST_KEY
      input_price_per_million: 0.4
      output_price_per_million: 1.6
      context_window: 128000
{extra}
  backup:
    - name: claude
      provider: anthropic
      model: claude-sonnet-4-5
      base_url: {url2}
      api_key_env: GW_TEST_MISSING_KEY
"""


def request(route: str = "main", **kw: object) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        route=route,
        messages=[
            messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Weather in Paris?"),
        ],
        **kw,  # type: ignore[arg-type]
    )


def details(error: grpc.aio.AioRpcError) -> tuple[str, float | None]:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            reason, retry = "", None
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry_info = error_details_pb2.RetryInfo()
                    detail.Unpack(retry_info)
                    retry = retry_info.retry_delay.seconds + retry_info.retry_delay.nanos / 1e9
            return reason, retry
    return "", None


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", KEY)
    monkeypatch.delenv("GW_TEST_MISSING_KEY", raising=False)


async def test_generate_streams_attempt_deltas_and_finished_with_usage_and_cost(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(), done=True)))
    async with (
        running_gateway(routes(fake.url), tmp_path) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        events = [r.event async for r in stub.Generate(request(), timeout=10)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "attempt_started"
    assert kinds[-1] == "finished"
    assert events[0].attempt_started.deployment == "primary"
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    assert text == "Expect mild weather in Paris tomorrow."
    finished = events[-1].finished
    assert finished.finish_reason == generation_pb2.FINISH_REASON_STOP
    assert finished.usage.prompt_tokens == 112
    assert finished.usage.total_tokens == 120
    # 112 * 0.4 + 8 * 1.6 = 57.6 micro-USD
    assert finished.usage.cost_micros_usd == 58
    assert (finished.provider, finished.model) == ("openai", "gpt-4.1-mini")


async def test_errors_reach_the_caller_as_typed_statuses(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.push(
        Reply(
            404,
            {
                "error": {
                    "message": "The model `gpt-9` does not exist",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "model_not_found",
                }
            },
        )
    )
    async with (
        running_gateway(routes(fake.url), tmp_path) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in stub.Generate(request(), timeout=10)]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert details(caught.value)[0] == "MODEL_NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in stub.Generate(request("nope"), timeout=10)]
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        bad = request(config=generation_pb2.GenerationConfig(temperature=3))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in stub.Generate(bad, timeout=10)]
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the backup deployment has no key configured: a clear failure, not a crash
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in stub.Generate(request("backup"), timeout=10)]
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "GW_TEST_MISSING_KEY" in (caught.value.details() or "")


async def test_rate_limits_answer_resource_exhausted_with_retry_info(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.default = Stream(wire.sse(*wire.openai_text(), done=True))
    async with (
        running_gateway(routes(fake.url, extra="      rpm: 2"), tmp_path) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        tenant = ((TENANT_METADATA_KEY, "limited"),)
        [r async for r in stub.Generate(request(), metadata=tenant, timeout=10)]
        call = stub.Generate(request(fail_fast_on_rate_limit=True), metadata=tenant, timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in call]
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        reason, retry = details(caught.value)
        assert reason == "TENANT_RATE_LIMITED"
        assert retry is not None
        assert 0 < retry <= 60
        # another tenant still has room, but the deployment's own rpm (2) is now used up
        [r async for r in stub.Generate(request(), timeout=10)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            [r async for r in stub.Generate(request(fail_fast_on_rate_limit=True), timeout=10)]
        assert details(caught.value)[0] == "DEPLOYMENT_RATE_LIMITED"
        status = await stub.GetProviderStatus(inference_pb2.GetProviderStatusRequest(route="main"))
        (primary,) = status.deployments
        assert (primary.rpm_limit, primary.rpm_remaining) == (2, 0)
    assert len(fake.requests) == 2


async def test_cancelling_the_call_closes_the_upstream_request_within_100ms(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.push(Stream(wire.sse(*wire.openai_text(), done=True), hang_after=2))
    async with (
        running_gateway(routes(fake.url), tmp_path) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        call = stub.Generate(request(), timeout=20)
        async for response in call:
            if response.event.WhichOneof("event") == "delta":
                break  # the provider is now stuck before its next chunk
        cancelled_at = time.monotonic()
        call.cancel()
        for _ in range(100):
            if fake.disconnected_at:
                break
            await asyncio.sleep(0.005)
    assert fake.disconnected_at, "the fake provider never saw the disconnect"
    assert fake.disconnected_at[0] - cancelled_at < 0.1


async def test_100_concurrent_streams_through_one_gateway(
    fake: FakeProvider, tmp_path: Path
) -> None:
    pieces = tuple(f" w{i}" for i in range(16))
    fake.default = Stream(wire.sse(*wire.openai_text(pieces), done=True))
    async with (
        running_gateway(routes(fake.url), tmp_path) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def one() -> str:
            events = [r.event async for r in stub.Generate(request(), timeout=30)]
            assert events[-1].WhichOneof("event") == "finished"
            return events[-1].finished.text

        texts = await asyncio.gather(*(one() for _ in range(100)))
    assert texts == ["".join(pieces)] * 100
    assert len(fake.requests) == 100


async def test_default_route_is_the_local_runner(tmp_path: Path) -> None:
    runner = FakeRunner()
    async with (
        fake_runner(runner) as target,
        running_gateway(None, tmp_path, runner_target=target) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        listed = await stub.ListModels(inference_pb2.ListModelsRequest())
        assert {(m.route, m.provider, m.model) for m in listed.models} == {
            ("default", "local", "smollm2"),
            ("local", "local", "smollm2"),
            ("tiny", "local", "tiny"),
        }
        events = [r.event async for r in stub.Generate(request(""), timeout=10)]
        assert events[-1].finished.text == "Hello from tiny"
        assert events[-1].finished.usage.total_tokens == 10
        assert not events[-1].finished.usage.estimated
        runner.fail = grpc.StatusCode.RESOURCE_EXHAUSTED  # a full queue is retried
        events = [r.event async for r in stub.Generate(request("local"), timeout=10)]
        kinds = [e.WhichOneof("event") for e in events]
        assert "attempt_failed" in kinds
        assert kinds[-1] == "finished"
    assert runner.requests[0].model == "smollm2"
    assert runner.requests[0].messages[0].content == "Weather in Paris?"


async def test_a_slow_local_model_is_waited_for_while_tokens_come(tmp_path: Path) -> None:
    """The local timeout bounds the wait for each token, not the whole answer: a CPU model on
    a busy machine may take minutes for a long answer."""
    runner = FakeRunner(pieces=("one", " two", " three", " four"))
    runner.piece_delay = 0.3  # 1.2 s in all, each token within the 0.5 s timeout
    async with fake_runner(runner) as target:
        local = f"""
routes:
  slow:
    - name: slow-local
      provider: local
      model: smollm2
      base_url: {target}
      timeout: 0.5
      max_retries: 0
"""
        async with (
            running_gateway(local, tmp_path) as gw,
            grpc.aio.insecure_channel(gw.address) as channel,
        ):
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            events = [r.event async for r in stub.Generate(request("slow"), timeout=10)]
            assert events[-1].finished.text == "one two three four"
            runner.piece_delay = 1.0  # now a token takes longer than the timeout
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.Generate(request("slow"), timeout=10):
                    pass
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "no token for 0.5 s" in (caught.value.details() or "")


async def test_a_schema_answer_cut_by_max_tokens_is_a_typed_error(tmp_path: Path) -> None:
    runner = FakeRunner(pieces=('{"kind": "sim',))
    runner.finish_reason = generation_pb2.FINISH_REASON_LENGTH
    ask = inference_pb2.GenerateRequest(
        route="default",
        messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Classify: hi")],
    )
    ask.config.max_tokens = 4
    ask.config.response_schema.update({"type": "object"})
    async with (
        fake_runner(runner) as target,
        running_gateway(None, tmp_path, runner_target=target) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        seen: list[generation_pb2.GenerateEvent] = []

        async def consume() -> None:
            async for reply in stub.Generate(ask, timeout=10):
                seen.append(reply.event)

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await consume()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "max_tokens (4)" in (caught.value.details() or "")
    failed = [e.attempt_failed for e in seen if e.HasField("attempt_failed")]
    assert failed
    for attempt in failed:  # the refused answers were paid for: the caller can bill them
        assert attempt.usage.completion_tokens > 0
        assert attempt.usage.total_tokens == (
            attempt.usage.prompt_tokens + attempt.usage.completion_tokens
        )


async def test_list_models_pages_and_status_and_count_tokens(
    fake: FakeProvider, tmp_path: Path
) -> None:
    async with (
        running_gateway(routes(fake.url), tmp_path) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        first = await stub.ListModels(inference_pb2.ListModelsRequest(page_size=1))
        assert len(first.models) == 1
        assert first.next_page_token
        second = await stub.ListModels(
            inference_pb2.ListModelsRequest(page_size=1, page_token=first.next_page_token)
        )
        assert second.models[0].deployment == "claude"
        assert not second.next_page_token
        assert first.models[0].input_price_micros_per_million == 400_000
        status = await stub.GetProviderStatus(inference_pb2.GetProviderStatusRequest())
        by_name = {d.model.deployment: d for d in status.deployments}
        assert by_name["primary"].credentials_configured
        assert not by_name["claude"].credentials_configured
        assert by_name["primary"].circuit_state == operations_pb2.CIRCUIT_STATE_CLOSED
        assert by_name["primary"].health == operations_pb2.DEPLOYMENT_HEALTH_HEALTHY
        assert by_name["claude"].health == operations_pb2.DEPLOYMENT_HEALTH_UNHEALTHY
        counted = await stub.CountTokens(
            inference_pb2.CountTokensRequest(
                route="main",
                messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Hello there")],
            )
        )
        assert counted.estimated
        assert counted.tokens > 0
        assert counted.context_window_tokens == 128000
        by_model = await stub.CountTokens(
            inference_pb2.CountTokensRequest(
                provider="openai",
                model="gpt-4.1-mini",
                messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Hello there")],
            )
        )
        assert by_model.tokens == counted.tokens
        only = await stub.ListModels(inference_pb2.ListModelsRequest(route="backup"))
        assert [m.deployment for m in only.models] == ["claude"]
        for bad, code in (
            (inference_pb2.ListModelsRequest(route="nope"), grpc.StatusCode.NOT_FOUND),
            (inference_pb2.ListModelsRequest(page_token="xyz"), grpc.StatusCode.INVALID_ARGUMENT),
            (inference_pb2.ListModelsRequest(page_size=5000), grpc.StatusCode.INVALID_ARGUMENT),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ListModels(bad)
            assert caught.value.code() == code


async def test_api_keys_never_reach_logs_spans_errors_or_responses(
    fake: FakeProvider, tmp_path: Path
) -> None:
    # A provider that echoes the whole key back in its error message (some do, partly).
    echo = {
        "error": {
            "message": f"Incorrect API key provided: {KEY}.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    fake.push(
        Stream(wire.sse(*wire.openai_text(), done=True)),
        Reply(500, {"error": {"message": f"upstream said {KEY}", "type": "server_error"}}),
        Reply(401, echo),
    )
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter("inference-gateway"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    seen: list[str] = []
    try:
        async with (
            running_gateway(routes(fake.url), tmp_path) as gw,
            grpc.aio.insecure_channel(gw.address) as channel,
        ):
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            seen.extend([str(r) async for r in stub.Generate(request(), timeout=10)])

            async def failing() -> None:
                async for r in stub.Generate(request(), timeout=10):
                    seen.append(str(r))

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await failing()
            seen.append(str(caught.value.details()))
            seen.append(str(caught.value.trailing_metadata()))
            status = await stub.GetProviderStatus(inference_pb2.GetProviderStatusRequest())
            seen.append(str(status))
            spans = gw.spans.get_finished_spans()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert fake.requests[0].headers["Authorization"] == f"Bearer {KEY}"  # it was really used
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    attempt_spans = [s for s in spans if s.name == "gateway.attempt"]
    assert len(attempt_spans) == 3
    span_text = " ".join(
        f"{s.name} {dict(s.attributes or {})} {s.events} {s.status}" for s in spans
    )
    everything = buffer.getvalue() + span_text + " ".join(seen)
    assert "attempt failed" in buffer.getvalue()
    assert KEY not in everything
    assert "SECRETSECRET" not in everything


async def test_the_local_runner_gets_the_schema_to_constrain_not_as_an_instruction(
    tmp_path: Path,
) -> None:
    runner = FakeRunner(pieces=('{"kind": "simple",', ' "reason": "a greeting"}'))
    schema = {
        "type": "object",
        "required": ["kind", "reason"],
        "properties": {"kind": {"enum": ["simple", "complex"]}, "reason": {"type": "string"}},
    }
    ask = inference_pb2.GenerateRequest(
        route="default",
        messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Classify: hi")],
    )
    ask.config.response_schema.update(schema)
    async with (
        fake_runner(runner) as target,
        running_gateway(None, tmp_path, runner_target=target) as gw,
        grpc.aio.insecure_channel(gw.address) as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        events = [r.event async for r in stub.Generate(ask, timeout=10)]
    sent = runner.requests[0]
    assert json_format.MessageToDict(sent.config.response_schema) == schema, "it constrains"
    assert [m.content for m in sent.messages] == ["Classify: hi"], "the prompt is the caller's"
    finished = events[-1].finished
    assert finished.structured_output.fields["kind"].string_value == "simple"
