"""Fixtures: the tiny demo model (written once per session) and in-process runners on port 0."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.runner.v1 import runner_pb2_grpc
from agentmesh_common import ServiceServer, Telemetry, serve
from agentmesh_runner.app import SERVICE_NAME, build
from agentmesh_runner.demo_model import write_demo_model
from agentmesh_runner.settings import RunnerSettings


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("demo") / "tiny", "tiny")


@dataclass
class RunningRunner:
    stub: runner_pb2_grpc.LocalRunnerServiceStub
    models_dir: Path
    telemetry: Telemetry
    spans: InMemorySpanExporter


StartRunner = Callable[..., Awaitable[RunningRunner]]


@pytest.fixture
async def start_runner(tiny_model: Path, tmp_path: Path) -> AsyncIterator[StartRunner]:
    """Start a runner in-process whose models_dir holds a copy of the tiny model."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None], grpc.aio.Channel]] = []

    async def start(**overrides: Any) -> RunningRunner:
        models_dir = tmp_path / f"models{len(stops)}"
        models_dir.mkdir()
        shutil.copytree(tiny_model, models_dir / "tiny")
        settings = RunnerSettings(
            port=0,
            metrics_port=None,
            host="127.0.0.1",
            models_dir=models_dir,
            grace_seconds=1.0,
            # test_generate drives the mlx backend through the service (its batching and
            # logs are mlx's); test_cpu_backend asks for the cpu one by name.
            **{"import_default_model": False, "default_backend": "mlx", **overrides},
        )
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        telemetry = Telemetry(service_name=SERVICE_NAME, tracer_provider=provider)
        started: asyncio.Future[ServiceServer] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(
            serve(
                SERVICE_NAME,
                settings,
                build,
                telemetry=telemetry,
                stop=stop,
                on_started=lambda server, _: started.set_result(server),
            )
        )
        server = await asyncio.wait_for(asyncio.shield(started), 30)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stops.append((stop, task, channel))
        return RunningRunner(
            runner_pb2_grpc.LocalRunnerServiceStub(channel), models_dir, telemetry, spans
        )

    yield start
    for stop, task, channel in stops:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 30)
