"""Composition root of the web edge: the orchestrator channel, the HTTP server, shutdown.

The edge keeps no state: any number of replicas serve the same API. Its gRPC server carries
only health and reflection (so Kubernetes probes it like every other service); the HTTP server
runs beside it on `http_port` and announces that port in a JSON line (`"http started"`) on
stdout, as the gRPC port is announced. On shutdown the HTTP server stops accepting, open event
streams end at once (clients resume on another replica from their last seq), and unary calls
in flight get the grace period.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

from aiohttp import web

from agentmesh_common import Registration, Telemetry, create_channel

from .edge import PUBLIC_SERVICES, Edge
from .grpcweb import GrpcWeb
from .middleware import Cors, errors, observe
from .observability import WebMetrics
from .pages import Pages
from .settings import WebSettings
from .streams import RelaySettings

__all__ = ["SERVICE_NAME", "build", "build_http"]

SERVICE_NAME = "web"

_logger = logging.getLogger("agentmesh.web")


async def build(
    stack: AsyncExitStack, settings: WebSettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Start the HTTP server on the stack; the gRPC server serves health only."""
    channel = create_channel(
        settings.orchestrator_target, tracer_provider=telemetry.tracer_provider
    )
    stack.push_async_callback(channel.close, None)
    edge = Edge(
        channel,
        relay=RelaySettings(
            buffer_bytes=settings.stream_buffer_bytes,
            slow_client_seconds=settings.slow_client_seconds,
            keepalive_seconds=settings.keepalive_seconds,
        ),
        unary_timeout=settings.unary_timeout_seconds,
        metrics=WebMetrics.create(telemetry.registry),
    )
    pages = Pages(edge, channel, trace_url_template=settings.trace_url_template)
    app = build_http(edge, pages, settings, telemetry)
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=settings.grace_seconds
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.http_port)
    await site.start()

    async def stop() -> None:
        await edge.drain()
        await runner.cleanup()

    stack.push_async_callback(stop)
    port = runner.addresses[0][1]
    _logger.info("http started", extra={"http_port": port})
    line = {"message": "http started", "service": SERVICE_NAME, "http_port": port}
    print(json.dumps(line), flush=True)
    return []


def build_http(
    edge: Edge, pages: Pages, settings: WebSettings, telemetry: Telemetry
) -> web.Application:
    """The aiohttp application: middlewares, the `/v1/` API, gRPC-web, health and the UI."""
    cors = Cors(settings.cors_allowed_origins)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            observe(edge.metrics, telemetry.tracer("agentmesh.web")),
            cors.middleware,
            errors,
        ],
    )
    app.on_response_prepare.append(cors.on_prepare)
    pages.add_routes(app, ui=settings.ui_enabled)
    app.router.add_route("*", "/v1/{path:.*}", edge.handle)
    GrpcWeb(edge, PUBLIC_SERVICES).add_routes(app)
    return app
