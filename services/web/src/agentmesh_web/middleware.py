"""What every HTTP request goes through: a span and metrics, CORS, and one error shape.

Order (outermost first): :func:`observe` (server span joined to the caller's W3C trace
context, request metrics, a JSON access log line without the query string, which may hold a
stream token), :func:`cors` (a browser origin on the allow-list, or the edge's own, else 403;
preflights answered here), :func:`errors` (every failure becomes the JSON error body).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from google.rpc import code_pb2
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agentmesh_common import AgentmeshError

from .errors import ErrorReply, edge_error, from_exception, from_rpc_error
from .observability import WebMetrics

__all__ = ["Cors", "errors", "json_error", "observe"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_logger = logging.getLogger("agentmesh.web")

_ALLOWED_HEADERS = (
    "authorization, content-type, x-api-key, last-event-id, accept, traceparent,"
    " x-grpc-web, x-user-agent, grpc-timeout"
)
_EXPOSED_HEADERS = "retry-after, content-type, grpc-status, grpc-message, grpc-status-details-bin"


def json_error(reply: ErrorReply, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=reply.http_status,
        text=reply.json(),
        content_type="application/json",
        headers={**reply.headers, **(headers or {})},
    )


def observe(
    metrics: WebMetrics, tracer: trace.Tracer
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        context = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span(
            f"HTTP {request.method}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path},
        ) as span:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            finally:
                route = str(request.get("route", "edge"))
                span.update_name(f"HTTP {request.method} {route}")
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                elapsed = time.perf_counter() - started
                metrics.requests.labels(route, request.method, str(status)).inc()
                metrics.request_seconds.labels(route).observe(elapsed)
                _logger.info(
                    "http request",
                    extra={
                        "method": request.method,
                        "path": request.path,
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )

    return middleware


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AgentmeshError as error:
        return json_error(from_exception(error))
    except grpc.RpcError as error:
        return json_error(from_rpc_error(error))
    except web.HTTPRequestEntityTooLarge as error:
        return json_error(
            edge_error(
                code_pb2.INVALID_ARGUMENT,
                reason="REQUEST_TOO_LARGE",
                message=error.text or "",
                http_status=413,
            )
        )
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        reply = edge_error(
            code_pb2.UNIMPLEMENTED,
            reason="METHOD_NOT_ALLOWED",
            message=f"{request.method} is not allowed here; allowed: {allowed}",
            http_status=405,
        )
        return json_error(reply, {"Allow": allowed})
    except web.HTTPNotFound:
        return json_error(
            edge_error(
                code_pb2.NOT_FOUND,
                reason="NO_ROUTE",
                message=f"no such path: {request.path}",
                http_status=404,
            )
        )
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return json_error(
            edge_error(
                code_pb2.UNKNOWN,
                reason="HTTP_ERROR",
                message=error.text or error.reason,
                http_status=error.status,
            )
        )
    except Exception:
        _logger.exception("request failed", extra={"path": request.path})
        return json_error(
            edge_error(
                code_pb2.INTERNAL,
                reason="INTERNAL",
                message="the web edge failed; see its log",
                http_status=500,
            )
        )


class Cors:
    """Cross-origin calls from the allow-listed origins (`*`: any); the edge's own pages are
    same-origin. Other origins are refused with 403 before anything runs."""

    def __init__(self, allowed_origins: tuple[str, ...]) -> None:
        self._any = "*" in allowed_origins
        self._allowed = frozenset(allowed_origins)

    def _allows(self, origin: str) -> bool:
        return self._any or origin in self._allowed

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or _same_origin(request, origin):
            return await handler(request)
        if not self._allows(origin):
            return json_error(
                edge_error(
                    code_pb2.PERMISSION_DENIED,
                    reason="CORS_ORIGIN_NOT_ALLOWED",
                    message=f"origin {origin} may not call this API"
                    " (see AGENTMESH_WEB_CORS_ALLOWED_ORIGINS)",
                    http_status=403,
                )
            )
        request["cors_origin"] = origin
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
                    "Access-Control-Allow-Headers": _ALLOWED_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        return await handler(request)

    @staticmethod
    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        """Stamp the CORS headers on every response, streaming ones included."""
        origin = request.get("cors_origin")
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED_HEADERS
        response.headers.add("Vary", "Origin")


def _same_origin(request: web.Request, origin: str) -> bool:
    return origin.split("://", 1)[-1] == request.host
