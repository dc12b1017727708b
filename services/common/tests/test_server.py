"""The server factory end to end: health, tracing across a hop, metrics, deadlines."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from agentmesh_common import (
    JsonFormatter,
    Registration,
    ServiceSettings,
    build_server,
    create_channel,
    load_settings,
    start_metrics_server,
)

from .conftest import Echo, collect, echo_handler, read_value

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _read_status(watch: grpc.aio.UnaryStreamCall[Any, Any]) -> int:
    response = await watch.read()
    assert isinstance(response, health_pb2.HealthCheckResponse)
    return int(response.status)


async def test_health_serving_then_not_serving_during_graceful_stop(echo: Echo) -> None:
    health = health_pb2_grpc.HealthStub(echo.channel)
    for service in ("", "test.v1.Echo"):
        response = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == SERVING

    watch = health.Watch(health_pb2.HealthCheckRequest(service="test.v1.Echo"))
    assert await _read_status(watch) == SERVING
    stream = echo.count()(StringValue(value="long"))
    assert await read_value(stream) == "0"

    stopping = asyncio.create_task(echo.server.stop(grace=2))
    assert await asyncio.wait_for(_read_status(watch), timeout=1) == NOT_SERVING
    assert not stopping.done()  # NOT_SERVING is visible while the server is still draining
    # The in-flight stream keeps flowing during the grace period, then is cancelled.
    assert await read_value(stream) == "1"
    await stopping
    received, error = await collect(stream)
    assert 0 < len(received) <= 25
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    await echo.server.stop()  # a second stop is a no-op


async def test_health_polling_sees_not_serving_during_shutdown_notice(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    settings = load_settings(ServiceSettings, {"AGENTMESH_SHUTDOWN_NOTICE_SECONDS": "0.5"})
    server = build_server(
        service_name="test",
        settings=settings,
        registrations=[Registration.from_handler(echo_handler())],
        tracer_provider=tracing[0],
        registry=CollectorRegistry(),
    )
    await server.start()
    channel = create_channel(f"127.0.0.1:{server.port}", tracer_provider=tracing[0])
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="test.v1.Echo")
    try:
        assert (await health.Check(request)).status == SERVING
        stopping = asyncio.create_task(server.stop(grace=1))
        await asyncio.sleep(0)  # let shutdown begin
        seen: set[object] = set()
        while not stopping.done():
            try:
                seen.add((await health.Check(request, timeout=1)).status)
            except grpc.aio.AioRpcError as exc:
                seen.add(exc.code())
                break
            await asyncio.sleep(0.05)
        await stopping
        assert NOT_SERVING in seen
        assert SERVING not in seen
    finally:
        await channel.close(None)
        await server.stop()


async def test_client_and_server_spans_share_one_trace(echo: Echo) -> None:
    tracer = echo.tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        assert (await echo.say()(StringValue(value="x"))).value == "hello x"
        messages = [m.value async for m in echo.count()(StringValue(value="ok"))]
    assert messages == ["0", "1"]
    await asyncio.sleep(0.05)  # streaming client spans end from a done-callback task

    spans = echo.spans.get_finished_spans()
    by_kind = {
        (span.name, span.kind): span for span in spans if span.name.startswith("test.v1.Echo/")
    }
    assert set(by_kind) == {
        ("test.v1.Echo/Say", SpanKind.CLIENT),
        ("test.v1.Echo/Say", SpanKind.SERVER),
        ("test.v1.Echo/Count", SpanKind.CLIENT),
        ("test.v1.Echo/Count", SpanKind.SERVER),
    }
    trace_id = caller.get_span_context().trace_id
    assert {span.context.trace_id for span in by_kind.values()} == {trace_id}
    for name in ("test.v1.Echo/Say", "test.v1.Echo/Count"):
        client, server = by_kind[(name, SpanKind.CLIENT)], by_kind[(name, SpanKind.SERVER)]
        assert server.parent is not None
        assert server.parent.span_id == client.context.span_id
        assert server.attributes is not None
        assert server.attributes["rpc.grpc.status_code"] == 0
    assert by_kind[("test.v1.Echo/Say", SpanKind.SERVER)].attributes == {
        "rpc.system": "grpc",
        "rpc.service": "test.v1.Echo",
        "rpc.method": "Say",
        "rpc.grpc.status_code": 0,
    }


async def test_failed_rpcs_mark_spans(echo: Echo) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await echo.say()(StringValue(value="boom"))
    with pytest.raises(grpc.aio.AioRpcError):
        await echo.say()(StringValue(value="not_found"))
    server_spans = [s for s in echo.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    internal, not_found = server_spans
    assert internal.status.status_code == StatusCode.ERROR
    assert internal.attributes is not None
    assert internal.attributes["rpc.grpc.status_code"] == 13
    # A client error is not a server failure (OTel gRPC conventions), but the code is kept.
    assert not_found.status.status_code == StatusCode.UNSET
    assert not_found.attributes is not None
    assert not_found.attributes["rpc.grpc.status_code"] == 5
    client_spans = [s for s in echo.spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
    assert all(s.status.status_code == StatusCode.ERROR for s in client_spans)


async def test_request_counter_and_metrics_endpoint(echo: Echo) -> None:
    def requests(method: str, code: str) -> float:
        value = echo.registry.get_sample_value(
            "agentmesh_rpc_requests_total",
            {"service": "test.v1.Echo", "method": method, "code": code},
        )
        return value or 0.0

    await echo.say()(StringValue(value="a"))
    await echo.say()(StringValue(value="b"))
    with pytest.raises(grpc.aio.AioRpcError):
        await echo.say()(StringValue(value="not_found"))
    assert requests("Say", "OK") == 2
    assert requests("Say", "NOT_FOUND") == 1
    assert (
        echo.registry.get_sample_value(
            "agentmesh_rpc_duration_seconds_count", {"service": "test.v1.Echo", "method": "Say"}
        )
        == 3
    )

    port, stop = start_metrics_server(echo.registry, "127.0.0.1", 0)
    try:
        assert port > 0
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        )
    finally:
        stop()
        stop()  # safe twice
    text = body.decode()
    assert 'agentmesh_rpc_requests_total{code="OK",method="Say",service="test.v1.Echo"} 2.0' in text


async def test_active_stream_gauge_and_cancellation(echo: Echo) -> None:
    def active() -> float | None:
        return echo.registry.get_sample_value(
            "agentmesh_rpc_active_streams", {"service": "test.v1.Echo", "method": "Count"}
        )

    call = echo.count()(StringValue(value="long"))
    assert await read_value(call) == "0"
    assert active() == 1
    call.cancel()
    for _ in range(100):
        if active() == 0:
            break
        await asyncio.sleep(0.01)
    assert active() == 0
    assert (
        echo.registry.get_sample_value(
            "agentmesh_rpc_requests_total",
            {"service": "test.v1.Echo", "method": "Count", "code": "CANCELLED"},
        )
        == 1
    )
    (server_span,) = [
        s for s in echo.spans.get_finished_spans() if s.kind == SpanKind.SERVER
    ]  # ended promptly, not at garbage collection
    assert server_span.attributes is not None
    assert server_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_default_deadline_applies_to_unary_calls(echo: Echo) -> None:
    channel = create_channel(echo.target, tracer_provider=echo.tracer_provider, default_timeout=0.2)
    say = channel.unary_unary(
        "/test.v1.Echo/Say", StringValue.SerializeToString, StringValue.FromString
    )
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await say(StringValue(value="sleep:2"))
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # An explicit timeout wins over the default.
        response = await say(StringValue(value="sleep:0.3"), timeout=5)
        assert response.value == "hello sleep:0.3"
        # Streams get no default deadline.
        count = channel.unary_stream(
            "/test.v1.Echo/Count", StringValue.SerializeToString, StringValue.FromString
        )
        call = count(StringValue(value="long"))
        received = [await read_value(call) for _ in range(5)]  # ~0.3 s, past the default
        assert received == ["0", "1", "2", "3", "4"]
        call.cancel()
    finally:
        await channel.close(None)


async def test_access_log_line_per_rpc_carries_trace_id(
    echo: Echo, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh.access")
    with pytest.raises(grpc.aio.AioRpcError):
        await echo.say()(StringValue(value="not_found"))
    (record,) = [r for r in caplog.records if r.name == "agentmesh.access"]
    (server_span,) = [s for s in echo.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    fields = record.__dict__
    assert fields["rpc_method"] == "/test.v1.Echo/Say"
    assert fields["code"] == "NOT_FOUND"
    assert fields["duration_ms"] >= 0
    assert fields["trace_id"] == f"{server_span.context.trace_id:032x}"
    line = json.loads(JsonFormatter("test").format(record))
    assert line["trace_id"] == fields["trace_id"]
    assert line["message"].startswith("rpc /test.v1.Echo/Say NOT_FOUND ")
