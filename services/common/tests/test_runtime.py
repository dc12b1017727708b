"""The service lifecycle: in-process with :func:`serve`, and as a real process with :func:`run`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider

from agentmesh_common import (
    Registration,
    ServiceServer,
    ServiceSettings,
    Telemetry,
    load_settings,
    serve,
)

from .conftest import echo_handler


async def test_serve_closes_resources_in_reverse_order_after_the_server() -> None:
    events: list[str] = []
    started: asyncio.Future[tuple[ServiceServer, int | None]] = asyncio.Future()

    async def build(
        stack: AsyncExitStack, settings: ServiceSettings, telemetry: Telemetry
    ) -> Sequence[Registration]:
        async def close(name: str) -> None:
            server, _ = started.result()
            # wait_for_termination(timeout) returns whether it timed out.
            still_running = await server.wait_for_termination(timeout=0.01)
            events.append(f"close {name} (server running: {still_running})")

        stack.push_async_callback(close, "database")
        stack.push_async_callback(close, "gateway channel")
        return [Registration.from_handler(echo_handler())]

    settings = load_settings(ServiceSettings, {"AGENTMESH_METRICS_PORT": "0"})
    telemetry = Telemetry("test", TracerProvider())
    stop = asyncio.Event()
    serving = asyncio.create_task(
        serve(
            "test",
            settings,
            build,
            telemetry=telemetry,
            stop=stop,
            on_started=lambda server, metrics_port: started.set_result((server, metrics_port)),
        )
    )
    server, metrics_port = await asyncio.wait_for(started, timeout=5)
    assert metrics_port is not None
    assert metrics_port > 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service="test.v1.Echo"))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    stop.set()
    await asyncio.wait_for(serving, timeout=5)
    assert events == [
        "close gateway channel (server running: False)",
        "close database (server running: False)",
    ]
    telemetry.tracer_provider.shutdown()


SERVICE_SCRIPT = textwrap.dedent(
    """
    import sys
    from contextlib import AsyncExitStack

    import grpc
    from google.protobuf.wrappers_pb2 import StringValue
    from pydantic_settings import SettingsConfigDict

    from agentmesh_common import Registration, ServiceSettings, run


    class DemoSettings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix="AGENTMESH_DEMO_")


    async def say(request, context):
        return StringValue(value="hi " + request.value)


    async def build(stack: AsyncExitStack, settings, telemetry):
        stack.callback(print, "closed resource", flush=True)
        handler = grpc.method_handlers_generic_handler(
            "demo.v1.Demo",
            {"Say": grpc.unary_unary_rpc_method_handler(
                say, StringValue.FromString, StringValue.SerializeToString)},
        )
        return [Registration.from_handler(handler)]


    sys.exit(run("demo", DemoSettings, build))
    """
)


def _spawn(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    script = tmp_path / "demo_service.py"
    script.write_text(SERVICE_SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_process_announces_port_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    process = _spawn(tmp_path, {"AGENTMESH_DEMO_PORT": "0", "AGENTMESH_DEMO_METRICS_PORT": "0"})
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), timeout=20)
        announced = json.loads(line)
        assert announced["message"] == "service started"
        assert announced["port"] > 0
        assert announced["metrics_port"] > 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{announced['port']}") as channel:
            say = channel.unary_unary(
                "/demo.v1.Demo/Say",
                request_serializer=lambda v: v.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            from google.protobuf.wrappers_pb2 import StringValue

            raw = await say(StringValue(value="there"), timeout=5)
            assert StringValue.FromString(raw).value == "hi there"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(asyncio.to_thread(process.communicate), timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "closed resource" in stdout
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in logs]
    assert "service started" in messages
    assert messages.index("service stopping") < messages.index("service stopped")
    started = logs[messages.index("service started")]
    assert (started["service"], started["port"]) == ("demo", announced["port"])


async def test_process_with_bad_settings_exits_two_with_one_line(tmp_path: Path) -> None:
    process = _spawn(tmp_path, {"AGENTMESH_DEMO_PORT": "abc"})
    stdout, stderr = await asyncio.wait_for(asyncio.to_thread(process.communicate), timeout=20)
    assert process.returncode == 2
    assert stdout == ""
    assert stderr.strip() == (
        "demo: invalid setting AGENTMESH_DEMO_PORT='abc': "
        "Input should be a valid integer, unable to parse string as an integer"
    )
