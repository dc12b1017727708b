"""The gateway served in-process on port 0 through the real composition root, and a fake
local runner (``LocalRunnerService``) on port 0."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.common.v1 import generation_pb2
from agentmesh.runner.v1 import runner_pb2, runner_pb2_grpc
from agentmesh_common import ServiceServer, Telemetry, load_settings, serve
from agentmesh_gateway.app import SERVICE_NAME, build
from agentmesh_gateway.settings import GatewaySettings


class RunningGateway:
    def __init__(
        self, port: int, telemetry: Telemetry, spans: InMemorySpanExporter, http_port: int = 0
    ) -> None:
        self.address = f"127.0.0.1:{port}"
        self.telemetry = telemetry
        self.spans = spans
        self.http_port = http_port

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL of the HTTP API (``.../v1``)."""
        return f"http://127.0.0.1:{self.http_port}/v1"


@asynccontextmanager
async def running_gateway(
    routes: str | None, tmp_path: Path, runner_target: str = "127.0.0.1:1", **env: str
) -> AsyncIterator[RunningGateway]:
    environ = {
        "AGENTMESH_GATEWAY_PORT": "0",
        "AGENTMESH_GATEWAY_METRICS_PORT": "",
        "AGENTMESH_GATEWAY_RUNNER_TARGET": runner_target,
        "AGENTMESH_GATEWAY_RETRY_BASE_SECONDS": "0.005",
        "AGENTMESH_GATEWAY_GRACE_SECONDS": "1",
        **env,
    }
    if routes is not None:
        path = tmp_path / "routes.yaml"
        path.write_text(routes)
        environ["AGENTMESH_GATEWAY_ROUTES_FILE"] = str(path)
    settings = load_settings(GatewaySettings, environ)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(service_name=SERVICE_NAME, tracer_provider=provider)
    stop = asyncio.Event()
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def on_started(server: ServiceServer, _: int | None) -> None:
        started.set_result(server.port)

    http_ports: list[int] = []
    task = asyncio.create_task(
        serve(
            SERVICE_NAME,
            settings,
            partial(build, on_http_started=http_ports.append),
            telemetry=telemetry,
            stop=stop,
            on_started=on_started,
        )
    )
    done, _ = await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the build error
    try:
        yield RunningGateway(
            started.result(), telemetry, exporter, http_ports[0] if http_ports else 0
        )
    finally:
        stop.set()
        await task


class FakeRunner(runner_pb2_grpc.LocalRunnerServiceServicer):
    """Streams ``pieces`` as deltas then ``finished`` with usage; or fails with ``fail``."""

    def __init__(self, pieces: Sequence[str] = ("Hello", " from", " tiny")) -> None:
        self.pieces = list(pieces)
        self.piece_delay = 0.0  # seconds before each piece: a slow model
        self.finish_reason = generation_pb2.FINISH_REASON_STOP
        self.fail: grpc.StatusCode | None = None
        self.requests: list[runner_pb2.GenerateRequest] = []

    async def Generate(
        self, request: runner_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[runner_pb2.GenerateResponse]:
        self.requests.append(request)
        if self.fail is not None:
            code, self.fail = self.fail, None
            await context.abort(code, "runner queue is full")
        for piece in self.pieces:
            await asyncio.sleep(self.piece_delay)
            yield runner_pb2.GenerateResponse(
                event=generation_pb2.GenerateEvent(delta=generation_pb2.Delta(text=piece))
            )
        yield runner_pb2.GenerateResponse(
            event=generation_pb2.GenerateEvent(
                finished=generation_pb2.Finished(
                    finish_reason=self.finish_reason,
                    usage=generation_pb2.Usage(
                        prompt_tokens=7, completion_tokens=3, total_tokens=10
                    ),
                )
            )
        )


@asynccontextmanager
async def fake_runner(runner: FakeRunner) -> AsyncIterator[str]:
    server = grpc.aio.server()
    runner_pb2_grpc.add_LocalRunnerServiceServicer_to_server(runner, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
