"""The gateway as a real process (``python -m agentmesh_gateway``) with a routes file and a key
in its environment, streaming from a fake provider; SIGTERM mid-stream still exits 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import grpc.aio
import pytest
from agentmesh_gateway_fakes import wire
from agentmesh_gateway_fakes.server import FakeProvider, Stream

from agentmesh.common.v1 import messages_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_cli.mesh import GATEWAY, ServiceProcess

pytestmark = pytest.mark.slow


async def test_gateway_process_streams_from_a_provider_and_drains_on_sigterm(
    fake: FakeProvider, tmp_path: Path
) -> None:
    fake.push(
        Stream(wire.sse(*wire.openai_text(), done=True)),
        Stream(wire.sse(*wire.openai_text(), done=True), delay=0.05),
    )
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        f"routes:\n  main:\n    - {{provider: openai, model: gpt-4.1-mini, "
        f"base_url: '{fake.url}/v1', api_key_env: GW_PROCESS_KEY}}\n"
    )
    process = ServiceProcess(
        GATEWAY,
        {
            "AGENTMESH_GATEWAY_PORT": "0",
            "AGENTMESH_GATEWAY_METRICS_PORT": "",
            "AGENTMESH_GATEWAY_ROUTES_FILE": str(routes),
            "AGENTMESH_GATEWAY_GRACE_SECONDS": "5",
            "GW_PROCESS_KEY": "sk-process-0123456789",
        },
        log_path=tmp_path / "gateway.log",
    )
    await process.start()
    try:
        request = inference_pb2.GenerateRequest(
            route="main",
            messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="Paris?")],
        )
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            events = [r.event async for r in stub.Generate(request, timeout=20)]
            assert events[-1].finished.text == "Expect mild weather in Paris tomorrow."
            assert fake.requests[0].headers["Authorization"] == "Bearer sk-process-0123456789"

            call = stub.Generate(request, timeout=20)
            first = await call.read()
            assert first.event.WhichOneof("event") == "attempt_started"
            assert process.process is not None
            process.process.terminate()  # in-flight streams are drained within the grace
            rest = []
            while (response := await call.read()) is not grpc.aio.EOF:
                rest.append(response.event)
            assert rest[-1].finished.text == "Expect mild weather in Paris tomorrow."
            assert await asyncio.wait_for(process.process.wait(), 15) == 0
    finally:
        await process.stop(grace=5)
    assert "sk-process-0123456789" not in (tmp_path / "gateway.log").read_text()
