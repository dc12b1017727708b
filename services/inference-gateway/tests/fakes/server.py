"""A scriptable fake provider HTTP server on 127.0.0.1 port 0 (aiohttp.web).

Each request takes the next scripted behaviour (or the default one): a JSON answer with any
status and headers, or a stream of exact byte chunks with an optional slow first token, a
delay between chunks, a connection cut, or a hang that records when the client went away.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    """A complete non-streaming answer (errors are always this, as every provider does)."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    """A 200 streaming answer made of exact byte chunks."""

    chunks: list[bytes]
    content_type: str = "text/event-stream"
    first_delay: float = 0.0
    delay: float = 0.0
    cut_after: int | None = None  # abort the connection after this many chunks
    hang_after: int | None = None  # stop sending after this many chunks and wait
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    peer: Any = None  # client (host, port): equal for requests on one kept-alive connection


class FakeProvider:
    """``await FakeProvider().start()``; ``url`` is its base URL."""

    def __init__(self) -> None:
        self.script: deque[Reply | Stream] = deque()
        self.default: Reply | Stream = Reply(500, {"error": "no behaviour scripted"})
        self.requests: list[Seen] = []
        self.disconnected_at: list[float] = []
        self.connections = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    def push(self, *behaviours: Reply | Stream) -> None:
        self.script.extend(behaviours)

    async def start(self) -> FakeProvider:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode()
        self.requests.append(
            Seen(
                request.method,
                request.path,
                request.query_string,
                dict(request.headers),
                body,
                request.transport.get_extra_info("peername") if request.transport else None,
            )
        )
        behaviour = self.script.popleft() if self.script else self.default
        if isinstance(behaviour, Reply):
            return web.Response(
                status=behaviour.status,
                text=json.dumps(behaviour.body),
                content_type="application/json",
                headers=behaviour.headers,
            )
        response = web.StreamResponse(
            status=200, headers={"Content-Type": behaviour.content_type, **behaviour.headers}
        )
        await response.prepare(request)
        if behaviour.first_delay:
            await asyncio.sleep(behaviour.first_delay)
        for index, chunk in enumerate(behaviour.chunks):
            if behaviour.cut_after is not None and index >= behaviour.cut_after:
                assert request.transport is not None
                request.transport.abort()
                raise ConnectionResetError("fake cut the connection")
            if behaviour.hang_after is not None and index >= behaviour.hang_after:
                await self._wait_for_disconnect(request)
                return response
            await response.write(chunk)
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
        if behaviour.cut_after is not None and behaviour.cut_after >= len(behaviour.chunks):
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError("fake cut the connection")
        if behaviour.hang_after is not None:
            await self._wait_for_disconnect(request)
            return response
        await response.write_eof()
        return response

    async def _wait_for_disconnect(self, request: web.Request) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            transport = request.transport
            if transport is None or transport.is_closing():
                self.disconnected_at.append(time.monotonic())
                return
            await asyncio.sleep(0.002)
