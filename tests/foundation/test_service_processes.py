"""Each of the four services as a real process: starts, serves health, reflection and metrics,
answers its own API (or a clear UNIMPLEMENTED where not built), and exits 0 on SIGTERM with a
stream open."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh.memory.v1 import memory_pb2, memory_pb2_grpc
from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_cli.mesh import (
    GATEWAY,
    MEMORY,
    ORCHESTRATOR,
    RUNNER,
    ServiceProcess,
    ServiceSpec,
)

pytestmark = pytest.mark.slow

GRACE_SECONDS = 3.0

# Each service's probe calls one of its RPCs through the generated stub, checks the answer and
# returns the status code name it got, which the service's metrics must then count.
Probe = Callable[[grpc.aio.Channel], Awaitable[str]]


async def _expect_error(call: Awaitable[object], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


async def _probe_memory(channel: grpc.aio.Channel) -> str:
    """Built; a call without the tenant metadata is refused, not served."""
    stub = memory_pb2_grpc.MemoryServiceStub(channel)
    await _expect_error(
        stub.GetUsage(memory_pb2.GetUsageRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    return "UNAUTHENTICATED"


async def _probe_runner(channel: grpc.aio.Channel) -> str:
    """The runner serves the packaged SmolLM2 it imported at start and the tiny demo model
    it wrote (no download)."""
    stub = runner_pb2_grpc.LocalRunnerServiceStub(channel)
    listed = await stub.ListModels(runner_pb2.ListModelsRequest(), timeout=10)
    assert [m.name for m in listed.models] == ["smollm2", "tiny"]
    return "OK"


async def _probe_gateway(channel: grpc.aio.Channel) -> str:
    """With no routes file the gateway serves the local runner's models."""
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    reply = await stub.GetProviderStatus(inference_pb2.GetProviderStatusRequest(), timeout=10)
    deployments = {(d.model.provider, d.model.model) for d in reply.deployments}
    assert deployments == {("local", "smollm2"), ("local", "tiny")}
    return "OK"


async def _probe_orchestrator(channel: grpc.aio.Channel) -> str:
    """Every public call needs an API key: without one it is refused, naming the reason."""
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    error = await _expect_error(
        stub.ListTools(orchestrator_pb2.ListToolsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "API key" in (error.details() or "")
    return "UNAUTHENTICATED"


CASES: dict[str, tuple[ServiceSpec, str, str, Probe]] = {
    "memory": (MEMORY, "agentmesh.memory.v1.MemoryService", "GetUsage", _probe_memory),
    "local-runner": (
        RUNNER,
        "agentmesh.runner.v1.LocalRunnerService",
        "ListModels",
        _probe_runner,
    ),
    "inference-gateway": (
        GATEWAY,
        "agentmesh.inference.v1.InferenceService",
        "GetProviderStatus",
        _probe_gateway,
    ),
    "orchestrator": (
        ORCHESTRATOR,
        "agentmesh.orchestrator.v1.OrchestratorService",
        "ListTools",
        _probe_orchestrator,
    ),
}


@pytest.fixture(params=sorted(CASES))
async def service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, str, str, Probe]]:
    spec, grpc_service, method, probe = CASES[request.param]
    prefix = spec.env_prefix
    env = {
        f"{prefix}PORT": "0",
        f"{prefix}METRICS_PORT": "0",
        f"{prefix}GRACE_SECONDS": str(GRACE_SECONDS),
        f"{prefix}DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'test.db'}",
        f"{prefix}MODELS_DIR": str(tmp_path / "models"),
    }
    process = ServiceProcess(spec, env, log_path=tmp_path / f"{spec.name}.log")
    await process.start()
    try:
        yield process, grpc_service, method, probe
    finally:
        await process.stop(grace=10)


def _methods_by_reflection(address: str, service: str) -> list[str]:
    """Every method of `service` with its request and response types, resolved by a
    reflection client alone (as grpcurl does): their full names."""
    with grpc.insecure_channel(address) as channel:
        pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        found = pool.FindServiceByName(service)
        for method in found.methods:
            assert pool.FindMessageTypeByName(method.input_type.full_name).fields is not None
            assert pool.FindMessageTypeByName(method.output_type.full_name) is not None
        return [f"{service}.{method.name}" for method in found.methods]


async def test_service_serves_health_reflection_metrics_and_clear_statuses(
    service: tuple[ServiceProcess, str, str, Probe],
) -> None:
    process, grpc_service, method, probe = service
    await process.wait_healthy(within_seconds=20)
    async with grpc.aio.insecure_channel(process.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", grpc_service):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        listed = [s.name async for r in responses for s in r.list_services_response.service]
        assert grpc_service in listed
        assert "grpc.health.v1.Health" in listed
        assert set(listed) >= {
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        everything = await health.List(health_pb2.HealthListRequest(), timeout=5)
        assert everything.statuses[grpc_service].status == health_pb2.HealthCheckResponse.SERVING

        # What `grpcurl describe pkg.Service.Method` asks, over reflection v1 (same messages
        # on the wire as v1alpha), for every method of the service.
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        methods = await asyncio.to_thread(_methods_by_reflection, process.address, grpc_service)
        assert f"{grpc_service}.{method}" in methods
        asked = [reflection_pb2.ServerReflectionRequest(file_containing_symbol=m) for m in methods]
        answers = [r async for r in v1(iter(asked))]
        assert len(answers) == len(methods)
        for name, answer in zip(methods, answers, strict=True):
            assert answer.file_descriptor_response.file_descriptor_proto, (name, answer)

        code = await probe(channel)

    assert process.metrics_port is not None
    url = f"http://127.0.0.1:{process.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert (
        f'agentmesh_rpc_requests_total{{code="{code}",method="{method}",'
        f'service="{grpc_service}"}} 1.0'
    ) in body


async def test_sigterm_with_an_open_stream_exits_zero_within_grace(
    service: tuple[ServiceProcess, str, str, Probe],
) -> None:
    process, grpc_service, _, _ = service
    await process.wait_healthy(within_seconds=20)
    async with grpc.aio.insecure_channel(process.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=grpc_service)
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        assert process.process is not None
        started = time.monotonic()
        process.process.terminate()

        seen: list[int] = []
        ended_with: grpc.StatusCode | None = None
        try:
            async with asyncio.timeout(GRACE_SECONDS + 10):
                while (update := await watch.read()) is not grpc.aio.EOF:
                    seen.append(update.status)
        except grpc.aio.AioRpcError as exc:
            ended_with = exc.code()
        code = await asyncio.wait_for(process.process.wait(), GRACE_SECONDS + 10)
        elapsed = time.monotonic() - started

    assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
    assert ended_with in (None, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert code == 0
    assert elapsed < GRACE_SECONDS + 5, f"took {elapsed:.1f}s to exit"
