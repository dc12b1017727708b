"""What the edge serves besides the API: health endpoints and the monitoring UI.

`/healthz` answers while the process serves (503 once it drains); `/readyz` also asks the
orchestrator's gRPC health service, so a load balancer sends browsers only to an edge that can
reach one. The UI is a single page (`static/index.html` and its hashed assets, built from
`services/web/ui` by `make ui`) that talks to the same `/v1/` API as any client;
`/ui/config.json` tells it the settings it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .edge import Edge

__all__ = ["STATIC_DIR", "Pages"]

STATIC_DIR = Path(__file__).parent / "static"


class Pages:
    """Health endpoints and the UI's files."""

    def __init__(
        self, edge: Edge, channel: grpc.aio.Channel, *, trace_url_template: str | None
    ) -> None:
        self._edge = edge
        self._health = health_pb2_grpc.HealthStub(channel)
        self._config = json.dumps({"traceUrlTemplate": trace_url_template})

    def add_routes(self, app: web.Application, *, ui: bool) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        if ui:
            app.router.add_get("/", self.index)
            app.router.add_get("/ui/config.json", self.config)
            app.router.add_static("/assets", STATIC_DIR / "assets")

    async def healthz(self, request: web.Request) -> web.Response:
        request["route"] = "healthz"
        if self._edge.draining:
            return web.json_response({"status": "DRAINING"}, status=503)
        return web.json_response({"status": "SERVING"})

    async def readyz(self, request: web.Request) -> web.Response:
        request["route"] = "readyz"
        if self._edge.draining:
            return web.json_response({"status": "DRAINING"}, status=503)
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        except grpc.RpcError as error:
            return web.json_response(
                {"status": "ORCHESTRATOR_UNREACHABLE", "detail": error.code().name}, status=503
            )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return web.json_response({"status": "ORCHESTRATOR_NOT_SERVING"}, status=503)
        return web.json_response({"status": "SERVING"})

    async def index(self, request: web.Request) -> web.FileResponse:
        request["route"] = "ui"
        return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(self, request: web.Request) -> web.Response:
        request["route"] = "ui"
        return web.Response(text=self._config, content_type="application/json")
