"""The HTTP listener's lifecycle: routes of both APIs on one aiohttp server, started and
stopped by the composition root (stop is safe to call twice)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from .anthropic_http import AnthropicHandlers
from .http_api import MAX_BODY_BYTES, HttpContext, errors_middleware
from .openai_http import OpenAIHandlers

_logger = logging.getLogger("agentmesh.gateway.http")


def build_app(context: HttpContext) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY_BYTES)
    openai = OpenAIHandlers(context)
    anthropic = AnthropicHandlers(context)
    app.router.add_post("/v1/chat/completions", openai.chat_completions)
    app.router.add_post("/chat/completions", openai.chat_completions)  # base URL without /v1
    app.router.add_get("/v1/models", openai.models)
    app.router.add_get("/models", openai.models)
    app.router.add_post("/v1/messages", anthropic.messages)
    app.router.add_get("/health", _health)
    return app


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class HttpServer:
    """``await start()`` binds ``host:port`` (0: a free port) and returns the port."""

    def __init__(self, context: HttpContext, host: str, port: int, grace_seconds: float) -> None:
        self._context = context
        self._host = host
        self._port = port
        self._runner = web.AppRunner(
            build_app(context),
            access_log=None,
            handler_cancellation=True,  # a client that hangs up cancels its upstream call
            shutdown_timeout=grace_seconds,
        )
        self.port = 0
        self._stopped = False

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        sockets: list[Any] = list(getattr(server, "sockets", None) or [])
        self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, then record
        what is left to record."""
        if self._stopped:
            return
        self._stopped = True
        await self._runner.cleanup()
        if self._context.ledger is not None:
            await self._context.ledger.drain()
