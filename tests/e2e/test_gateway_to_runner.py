"""End to end through two real processes: the inference gateway's `local` provider streaming
from the local runner, which serves the generated tiny demo model with real mlx-lm."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agentmesh.common.v1 import generation_pb2, messages_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_cli.mesh import GATEWAY, RUNNER, ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture
async def runner_and_gateway(
    tmp_path: Path,
) -> AsyncIterator[tuple[ServiceProcess, ServiceProcess]]:
    runner = ServiceProcess(
        RUNNER,
        {
            "AGENTMESH_RUNNER_PORT": "0",
            "AGENTMESH_RUNNER_METRICS_PORT": "0",
            "AGENTMESH_RUNNER_MODELS_DIR": str(tmp_path / "models"),
        },
        log_path=tmp_path / "runner.log",
    )
    await runner.start()
    gateway = ServiceProcess(
        GATEWAY,
        {
            "AGENTMESH_GATEWAY_PORT": "0",
            "AGENTMESH_GATEWAY_METRICS_PORT": "0",
            "AGENTMESH_GATEWAY_RUNNER_TARGET": runner.address,
        },
        log_path=tmp_path / "gateway.log",
    )
    try:
        await gateway.start()
        await gateway.wait_healthy()
        yield runner, gateway
    finally:
        await gateway.stop()
        await runner.stop()


async def test_default_route_streams_tokens_from_the_tiny_model(
    runner_and_gateway: tuple[ServiceProcess, ServiceProcess],
) -> None:
    _, gateway = runner_and_gateway
    request = inference_pb2.GenerateRequest(
        route="default",
        messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Say hello.")],
        config=generation_pb2.GenerationConfig(max_tokens=12, temperature=0.0),
    )
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        events = [r.event async for r in stub.Generate(request, timeout=60)]

    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "attempt_started"
    assert events[0].attempt_started.provider == "local"
    assert kinds[-1] == "finished"
    deltas = [e.delta.text for e in events if e.WhichOneof("event") == "delta"]
    assert deltas, "no text streamed"
    finished = events[-1].finished
    assert finished.provider == "local"
    assert finished.text == "".join(deltas)
    assert finished.finish_reason in (
        generation_pb2.FINISH_REASON_STOP,
        generation_pb2.FINISH_REASON_LENGTH,
    )
    usage = finished.usage
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert not usage.estimated, "the runner counts tokens exactly"


async def test_cancelling_the_gateway_call_stops_the_runner_generating(
    runner_and_gateway: tuple[ServiceProcess, ServiceProcess],
) -> None:
    runner, gateway = runner_and_gateway
    request = inference_pb2.GenerateRequest(
        route="default",
        messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Talk a lot.")],
        config=generation_pb2.GenerationConfig(max_tokens=100_000, temperature=1.0),
    )
    async with (
        grpc.aio.insecure_channel(gateway.address) as gateway_channel,
        grpc.aio.insecure_channel(runner.address) as runner_channel,
    ):
        runner_stub = runner_pb2_grpc.LocalRunnerServiceStub(runner_channel)
        call = inference_pb2_grpc.InferenceServiceStub(gateway_channel).Generate(
            request, timeout=60
        )
        async for response in call:
            if response.event.WhichOneof("event") == "delta":
                break
        status = await runner_stub.GetStatus(runner_pb2.GetStatusRequest(), timeout=5)
        assert sum(m.active_requests for m in status.models) == 1, "the runner is generating"
        call.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while True:
            status = await runner_stub.GetStatus(runner_pb2.GetStatusRequest(), timeout=5)
            if sum(m.active_requests + m.queue_depth for m in status.models) == 0:
                break
            assert loop.time() < deadline, "the runner kept generating after the caller left"
            await asyncio.sleep(0.05)
