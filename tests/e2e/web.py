"""What the web edge tests share: a mesh with the edge, every service a separate process, one
per test module; an HTTP client per tenant; and small readers of SSE and NDJSON streams."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from agentmesh_cli.mesh import MEMORY, create_api_key

from .conftest import Answer, Chat, Mesh, start_e2e_mesh, stop_e2e_mesh, system_of

#: Agents answer by their system prompt: "Long" writes about 100 KB each turn, "Slow" takes its
#: time, anything else says hello.
LONG_ANSWER = " ".join(f"{i:04d}" + "x" * 95 for i in range(1000))


def speaker(chat: Chat) -> Answer:
    system = system_of(chat)
    if system.startswith("Long"):
        return Answer(text=LONG_ANSWER)
    if system.startswith("Slow"):
        return Answer(text="one two three four five six seven eight", delay_seconds=1.6)
    return Answer(text=f"Hello from {system.split('.')[0] or 'nobody'}.")


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: str

    @property
    def json(self) -> dict[str, Any]:
        document = json.loads(self.data)
        assert isinstance(document, dict)
        return document


async def read_sse(response: aiohttp.ClientResponse) -> AsyncIterator[SseEvent]:
    """The events of a text/event-stream response (comments skipped)."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in fields:
                yield SseEvent(fields.get("id"), fields.get("event", "message"), fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


class WebMesh:
    """The processes and a way to get a fresh tenant (its own API key and rate budget)."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.url = mesh.web_url

    async def tenant(self) -> str:
        return await create_api_key(
            self.mesh.services[MEMORY.name].address, f"web-{uuid.uuid4().hex[:8]}", "web tests"
        )

    def session(self, api_key: str | None = None, **headers: str) -> aiohttp.ClientSession:
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        return aiohttp.ClientSession(
            self.url, headers=headers, timeout=aiohttp.ClientTimeout(total=60)
        )

    async def metric(self, name: str) -> float:
        """The sum of a Prometheus metric of the web edge (all label sets)."""
        port = self.mesh.services["web"].metrics_port
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as reply,
        ):
            text = await reply.text()
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and not line.startswith("#")
        )


async def start_web_mesh(tmp_path: Path, **web_env: str) -> WebMesh:
    env = {
        "AGENTMESH_WEB_CORS_ALLOWED_ORIGINS": "https://app.example.com",
        "AGENTMESH_WEB_STREAM_BUFFER_BYTES": "65536",
        "AGENTMESH_WEB_SLOW_CLIENT_SECONDS": "1",
        "AGENTMESH_WEB_KEEPALIVE_SECONDS": "1",
        "AGENTMESH_WEB_MAX_BODY_BYTES": "65536",
        **web_env,
    }
    mesh = await start_e2e_mesh(
        tmp_path,
        speaker,
        runner=False,
        web=env,
        orchestrator={
            "AGENTMESH_ORCHESTRATOR_REQUESTS_PER_MINUTE": "120",
            "AGENTMESH_ORCHESTRATOR_STREAM_TOKEN_SECRET": "web-tests-secret-0123456789",
        },
    )
    return WebMesh(mesh)


async def stop_web_mesh(web: WebMesh) -> None:
    await stop_e2e_mesh(web.mesh)
