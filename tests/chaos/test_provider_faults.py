"""The provider fault matrix against a real gateway process: each fault with and without a
fallback deployment. Without one, the call ends with a clear status (never UNKNOWN or
INTERNAL, with a message) or the whole answer; with one, the whole answer comes from the
fallback. Never an OK that carries part of the answer (silent truncation)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from agentmesh.common.v1 import messages_pb2
from agentmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from agentmesh_cli.mesh import GATEWAY, start_mesh, stop_mesh
from agentmesh_common import TENANT_METADATA_KEY
from tests.timing import scaled

from .support import FIGURES, OUTCOMES

pytestmark = pytest.mark.slow

ANSWER = "the whole answer is here"
FAULTS = (
    "429",
    "500",
    "503",
    "529",
    "timeout",
    "cut mid-stream",
    "malformed chunk",
    "error inside a 200",
    "no [DONE]",
    "401",
)
#: Statuses that say clearly what happened (anything but these fails the matrix).
CLEAR = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
}


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": "chatcmpl-fault",
        "object": "chat.completion.chunk",
        "created": 1_763_700_000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


async def provider(request: web.Request) -> web.StreamResponse:
    """An OpenAI-format server whose model name is the fault it shows ("good": none)."""
    body = await request.json()
    fault = body["model"]
    error = {"error": {"message": f"fault {fault}", "type": "server_error"}}
    if fault in ("429", "500", "503", "529", "401"):
        headers = {"Retry-After": "1"} if fault == "429" else {}
        return web.json_response(error, status=int(fault), headers=headers)
    if fault == "timeout":
        await asyncio.sleep(30)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    words = ANSWER.split(" ")
    if fault == "error inside a 200":
        await response.write(f"data: {json.dumps(error)}\n\n".encode())
        await response.write_eof()
        return response
    for i, word in enumerate(words):
        if fault == "cut mid-stream" and i == 2:
            assert request.transport is not None
            request.transport.abort()
            return response
        if fault == "malformed chunk" and i == 2:
            await response.write(b'data: {"choices": [{"delta": {"content": \n\n')
        await response.write(_chunk({"content": word if i == 0 else " " + word}))
    if fault == "no [DONE]":  # the stream just ends: no finish reason, no [DONE]
        await response.write_eof()
        return response
    await response.write(_chunk({}, "stop"))
    usage = {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
    await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def routes(port: int) -> str:
    def deployment(name: str, model: str, priority: int) -> list[str]:
        return [
            f"    - name: {name}",
            "      provider: openai_compatible",
            f"      model: {json.dumps(model)}",
            f"      base_url: http://127.0.0.1:{port}/v1",
            "      max_retries: 1",
            "      timeout: 2",
            f"      priority: {priority}",
        ]

    lines = ["routes:"]
    for i, fault in enumerate(FAULTS):
        lines += [f"  plain-{i}:", *deployment(f"plain-{i}", fault, 0)]
        lines += [f"  fallback-{i}:", *deployment(f"faulty-{i}", fault, 0)]
        lines += deployment(f"good-{i}", "good", 1)
    return "\n".join(lines) + "\n"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", provider)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(routes(port))
    env = {
        "AGENTMESH_GATEWAY_ROUTES_FILE": str(routes_file),
        "AGENTMESH_GATEWAY_METRICS_PORT": "0",
    }
    services = await start_mesh(
        tmp_path, ports={GATEWAY.name: 0}, specs=(GATEWAY,), extra_env={GATEWAY.name: env}
    )
    try:
        yield services[0].address
    finally:
        await stop_mesh(services)
        await runner.cleanup()


async def generate(address: str, route: str) -> tuple[grpc.StatusCode, str, str]:
    """(status, the text of the attempt that finished or was streaming, the error message)."""
    text: list[str] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = inference_pb2_grpc.InferenceServiceStub(channel).Generate(
            inference_pb2.GenerateRequest(
                route=route,
                messages=[messages_pb2.Message(role=messages_pb2.ROLE_USER, content="hi")],
                idempotency_key=uuid.uuid4().hex,
            ),
            metadata=((TENANT_METADATA_KEY, "chaos"),),
            timeout=scaled(30),
        )
        try:
            async for reply in call:
                event = reply.event
                if event.HasField("restart"):
                    text.clear()
                elif event.HasField("delta"):
                    text.append(event.delta.text)
                elif event.HasField("finished"):
                    return grpc.StatusCode.OK, "".join(text) or event.finished.text, ""
        except grpc.aio.AioRpcError as error:
            return error.code(), "".join(text), error.details() or ""
    return grpc.StatusCode.OK, "".join(text), "the stream ended without finished"


@pytest.mark.timeout(scaled(120))
async def test_the_provider_fault_matrix_with_and_without_fallback(gateway: str) -> None:
    problems = []
    rows = []
    for i, fault in enumerate(FAULTS):
        for mode in ("plain", "fallback"):
            code, text, message = await generate(gateway, f"{mode}-{i}")
            rows.append(f"{fault:20} {mode:8} {code.name:20} {text!r} {message[:60]}")
            OUTCOMES[f"faults {mode}"][code.name] += 1
            FIGURES["fault sessions"] += 1
            if code == grpc.StatusCode.OK and text != ANSWER:
                FIGURES["silent truncations"] += 1
                problems.append(f"{fault} {mode}: OK with {text!r}")
            elif code != grpc.StatusCode.OK and (code not in CLEAR or not message):
                problems.append(f"{fault} {mode}: {code.name} {message!r}")
            elif mode == "fallback" and code != grpc.StatusCode.OK:
                problems.append(f"{fault} with a fallback: {code.name} {message!r}")
    print("\n".join(rows))
    assert not problems, "\n".join(problems + rows)
