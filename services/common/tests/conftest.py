"""Helpers for the agentmesh_common tests: a generic ``test.v1.Echo`` service on port 0.

The Echo service is built from grpc generic handlers and protobuf well-known types, so these
tests depend on no generated agentmesh protos.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from agentmesh_common import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    Registration,
    ResourceExhausted,
    ServiceServer,
    ServiceSettings,
    build_server,
    create_channel,
    load_settings,
)

ECHO_SERVICE = "test.v1.Echo"
ERROR_DOMAIN = "agentmesh.test"


def fail_as(kind: str) -> None:
    """Raise what the request asks for (used by the Echo handlers)."""
    if kind == "not_found":
        raise NotFound("agent 'x' not found", reason="AGENT_NOT_FOUND", metadata={"agent": "x"})
    if kind == "invalid":
        raise InvalidArgument(
            "bad agent",
            violations=[
                FieldViolation("agent.name", "must not be empty"),
                FieldViolation("agent.temperature", "must be between 0 and 2"),
            ],
        )
    if kind == "exhausted":
        raise ResourceExhausted("slow down", retry_after=1.5)
    if kind == "boom":
        raise RuntimeError("secret database password in this message")
    if kind == "unimplemented":
        raise NotImplementedError("nobody wrote this")


async def say(request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> StringValue:
    if request.value.startswith("sleep:"):
        await asyncio.sleep(float(request.value.removeprefix("sleep:")))
    elif request.value == "abort":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "handler aborted itself")
    fail_as(request.value)
    return StringValue(value=f"hello {request.value}")


async def count(
    request: StringValue, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[StringValue]:
    """Yields 0 and 1, then fails as asked; ``long`` keeps streaming for a minute."""
    for i in range(2):
        yield StringValue(value=str(i))
    if request.value == "long":
        for i in range(2, 600):
            await asyncio.sleep(0.1)
            yield StringValue(value=str(i))
    fail_as(request.value)


async def count_by_write(request: StringValue, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """The ``context.write`` style of server streaming."""
    for i in range(3):
        await context.write(StringValue(value=str(i)))
    fail_as(request.value)


def echo_handler() -> grpc.ServiceRpcHandler[Any, Any]:
    def unary_stream(fn: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_stream_rpc_method_handler(
            fn, StringValue.FromString, StringValue.SerializeToString
        )

    handler: Any = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(
                say, StringValue.FromString, StringValue.SerializeToString
            ),
            "Count": unary_stream(count),
            "CountByWrite": unary_stream(count_by_write),
        },
    )
    return handler  # type: ignore[no-any-return]


EOF: object = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs


async def read_value(call: grpc.aio.UnaryStreamCall[Any, StringValue]) -> str:
    """The next message of a stream of StringValue (fails at the end of the stream)."""
    message = await call.read()
    assert isinstance(message, StringValue)
    return message.value


async def collect(call: grpc.aio.UnaryStreamCall[Any, StringValue]) -> tuple[list[str], Any]:
    """Read a stream to its end: the messages received and the error that ended it, if any."""
    received: list[str] = []
    try:
        while (message := await call.read()) is not EOF:
            assert isinstance(message, StringValue)
            received.append(message.value)
    except grpc.aio.AioRpcError as exc:
        return received, exc
    return received, None


@dataclass
class Echo:
    """A started Echo server with a client channel and its telemetry sinks."""

    server: ServiceServer
    channel: grpc.aio.Channel
    registry: CollectorRegistry
    spans: InMemorySpanExporter
    tracer_provider: TracerProvider

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def say(self) -> grpc.aio.UnaryUnaryMultiCallable[StringValue, StringValue]:
        return self.channel.unary_unary(
            f"/{ECHO_SERVICE}/Say", StringValue.SerializeToString, StringValue.FromString
        )

    def count(
        self, method: str = "Count"
    ) -> grpc.aio.UnaryStreamMultiCallable[StringValue, StringValue]:
        return self.channel.unary_stream(
            f"/{ECHO_SERVICE}/{method}", StringValue.SerializeToString, StringValue.FromString
        )


@pytest.fixture
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
async def echo(tracing: tuple[TracerProvider, InMemorySpanExporter]) -> AsyncIterator[Echo]:
    provider, exporter = tracing
    registry = CollectorRegistry()
    server = build_server(
        service_name="test",
        settings=load_settings(ServiceSettings, {}),
        registrations=[Registration.from_handler(echo_handler())],
        tracer_provider=provider,
        registry=registry,
        error_domain=ERROR_DOMAIN,
    )
    await server.start()
    channel = create_channel(f"127.0.0.1:{server.port}", tracer_provider=provider)
    try:
        yield Echo(server, channel, registry, exporter, provider)
    finally:
        await channel.close(None)
        await server.stop(0)
