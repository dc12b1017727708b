"""The orchestrator's gateway adapter over a real gRPC channel: a gateway that ends a call
with a rich status (as the real one does when every deployment failed) must reach the turn
with its ErrorInfo reason, since strategies decide on it (a planner whose answer did not
match the plan schema is asked again; any other failure ends the session)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from agentmesh.common.v1 import sessions_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_common import FailedPrecondition, Unavailable, to_grpc_status
from agentmesh_orchestrator.adapters.gateway_client import GatewayClient
from agentmesh_orchestrator.engine import EngineSettings, SessionEngine
from agentmesh_orchestrator.testing import (
    InMemorySessionStore,
    Reply,
    ScriptedGateway,
    system_prompt,
)
from agentmesh_orchestrator.tools import builtin_tools

from .conftest import TENANT, make_session

PLAN = {"rationale": "one step", "tasks": [{"id": "t1", "description": "Say hello"}]}
REJECTED = FailedPrecondition(
    "the model's output did not match the response schema twice: non-unique elements",
    reason="STRUCTURED_OUTPUT_INVALID",
)


class GrpcScriptedGateway(inference_pb2_grpc.InferenceServiceServicer):
    """`InferenceService.Generate` answering from a script; a scripted error ends the call
    with that error's rich status, as the real gateway's interceptor does."""

    def __init__(self, script: Callable[[inference_pb2.GenerateRequest], Reply]) -> None:
        self.scripted = ScriptedGateway(script)

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        async for event in self.scripted.generate(TENANT, request):
            if event.HasField("attempt_failed"):
                status = to_grpc_status(REJECTED, "inference.agentmesh.dev")
                await context.abort(status.code, status.details, status.trailing_metadata)
            yield inference_pb2.GenerateResponse(event=event)


@pytest.fixture
async def gateway_channel() -> AsyncIterator[Callable[..., grpc.aio.Channel]]:
    servers: list[grpc.aio.Server] = []
    channels: list[grpc.aio.Channel] = []

    async def start(script: Callable[[inference_pb2.GenerateRequest], Reply]) -> grpc.aio.Channel:
        server = grpc.aio.server()
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            GrpcScriptedGateway(script), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel

    yield start  # type: ignore[misc]
    for channel in channels:
        await channel.close()
    for server in servers:
        await server.stop(None)


async def test_a_failed_call_keeps_the_gateways_error_reason(
    gateway_channel: Callable[..., object],
) -> None:
    channel = await gateway_channel(lambda _: Reply(error=status_pb2.Status(code=9)))  # type: ignore[misc]
    client = GatewayClient(channel, timeout=10)
    events = [e async for e in client.generate(TENANT, inference_pb2.GenerateRequest())]
    failed = events[-1].attempt_failed
    assert failed.error.code == code_pb2.FAILED_PRECONDITION
    assert "did not match the response schema" in failed.error.message
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in failed.error.details)
    assert info.reason == "STRUCTURED_OUTPUT_INVALID"


async def test_a_plan_the_gateway_rejected_is_asked_for_again_through_grpc(
    gateway_channel: Callable[..., object],
) -> None:
    planner_calls = 0

    def script(request: inference_pb2.GenerateRequest) -> Reply:
        nonlocal planner_calls
        if "You are a planner" in system_prompt(request):
            planner_calls += 1
            if planner_calls == 1:  # the gateway refused the first answer as structured output
                return Reply(error=status_pb2.Status(code=code_pb2.FAILED_PRECONDITION))
            return Reply(text=json.dumps(PLAN))
        return Reply(text="Hello.")

    channel = await gateway_channel(script)  # type: ignore[misc]
    store = InMemorySessionStore()
    engine = SessionEngine(
        store=store,
        gateway=GatewayClient(channel, timeout=10),
        tools=builtin_tools(),
        settings=EngineSettings(retry_backoff_seconds=0.0),
    )
    session = make_session(sessions_pb2.STRATEGY_PLANNER_EXECUTOR)
    final = await engine.run(engine.open_run(TENANT, session, []))
    assert final.status == sessions_pb2.SESSION_STATUS_COMPLETED, final.error
    assert planner_calls == 2


class RefusingGateway(inference_pb2_grpc.InferenceServiceServicer):
    """Answers every call with the gateway's own UNAVAILABLE (every deployment is down)."""

    def __init__(self) -> None:
        self.calls = 0

    async def Generate(
        self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        self.calls += 1
        status = to_grpc_status(
            Unavailable(
                "every deployment of route 'default' has an open circuit", reason="CIRCUIT_OPEN"
            ),
            "inference.agentmesh.dev",
        )
        await context.abort(status.code, status.details, status.trailing_metadata)
        yield inference_pb2.GenerateResponse()  # pragma: no cover - abort raised


async def test_the_gateways_own_unavailable_is_not_called_again() -> None:
    """Only a gateway that cannot be reached is called again (issue 16, finding 5); its own
    UNAVAILABLE comes after its retries and fallbacks, and keeps its reason."""
    refusing = RefusingGateway()
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(refusing, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = GatewayClient(channel, timeout=10, unavailable_seconds=30)
            events = [e async for e in client.generate(TENANT, inference_pb2.GenerateRequest())]
    finally:
        await server.stop(None)
    assert refusing.calls == 1
    failed = events[-1].attempt_failed
    assert failed.error.code == code_pb2.UNAVAILABLE
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in failed.error.details)
    assert info.reason == "CIRCUIT_OPEN"
