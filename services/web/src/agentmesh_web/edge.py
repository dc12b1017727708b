"""The public API over HTTP: every annotated RPC of the public services (`OrchestratorService`,
`WorkflowService`, `ScheduleService`), unary or streamed.

A request is matched to its RPC by the `google.api.http` rules (:mod:`.routes`), turned into the
request message (:mod:`.transcode`) and sent to the orchestrator with the caller's credentials:
`Authorization: Bearer <key>` or `X-API-Key` pass through; `?stream_token=` (what a browser's
EventSource or WebSocket can send) becomes the bearer credential of that call. A unary RPC
answers with its reply as JSON. A streaming RPC (Step, Run, Execute, StreamSession,
StreamWorkflow, StreamToken) answers
with Server-Sent Events, or newline-delimited JSON when the client accepts
`application/x-ndjson`, or a WebSocket when the client asks to upgrade; the event streams resume
after `Last-Event-ID` (or `?after_seq=`). Errors before the first event are plain HTTP errors;
later ones end the stream with the same error body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import WSCloseCode, web
from google.protobuf import descriptor, message
from google.rpc import code_pb2

from agentmesh.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from agentmesh.workflow.v1 import (
    schedule_pb2,
    schedule_pb2_grpc,
    workflow_service_pb2,
    workflow_service_pb2_grpc,
)
from agentmesh_common import InvalidArgument

from .errors import edge_error
from .middleware import json_error
from .observability import WebMetrics
from .routes import Match, Router, routes_of
from .sinks import NdjsonSink, SseSink, WebSocketSink
from .streams import Relay, RelaySettings, Sink
from .transcode import build_request, to_json

__all__ = ["ORCHESTRATOR_SERVICE", "PUBLIC_SERVICES", "Edge", "credentials"]

ORCHESTRATOR_SERVICE = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
WORKFLOW_SERVICE = workflow_service_pb2.DESCRIPTOR.services_by_name["WorkflowService"]
SCHEDULE_SERVICE = schedule_pb2.DESCRIPTOR.services_by_name["ScheduleService"]
#: What the edge exposes (all served by the orchestrator); never an internal service.
PUBLIC_SERVICES = (ORCHESTRATOR_SERVICE, WORKFLOW_SERVICE, SCHEDULE_SERVICE)
STREAM_TOKEN_PARAMETER = "stream_token"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Edge:
    """Handlers of the `/v1/` API; owns the open streams so shutdown can end them."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        relay: RelaySettings,
        unary_timeout: float,
        metrics: WebMetrics,
    ) -> None:
        self._stubs: dict[str, Any] = {
            ORCHESTRATOR_SERVICE.full_name: orchestrator_pb2_grpc.OrchestratorServiceStub(channel),
            WORKFLOW_SERVICE.full_name: workflow_service_pb2_grpc.WorkflowServiceStub(channel),
            SCHEDULE_SERVICE.full_name: schedule_pb2_grpc.ScheduleServiceStub(channel),
        }
        self._relay = relay
        self.unary_timeout = unary_timeout
        self.metrics = metrics
        self.router = Router([route for service in PUBLIC_SERVICES for route in routes_of(service)])
        self._open: set[Relay] = set()
        self.draining = False

    async def drain(self) -> None:
        """Refuse new streams and end the open ones (their clients resume elsewhere)."""
        self.draining = True
        for relay in list(self._open):
            relay.stop()

    def rpc(self, method: descriptor.MethodDescriptor) -> Any:
        """The stub's callable of one RPC of a public service."""
        return getattr(self._stubs[method.containing_service.full_name], method.name)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        match = self.router.match(request.method, raw_path)
        if match is None:
            allowed = self.router.allowed(raw_path)
            if allowed:
                raise web.HTTPMethodNotAllowed(request.method, allowed)
            raise web.HTTPNotFound()
        request["route"] = match.route.method.name
        query = {key: request.query.getall(key) for key in set(request.query.keys())}
        metadata = credentials(request, query.pop(STREAM_TOKEN_PARAMETER, None))
        body = await request.read() if request.method in _BODY_METHODS else b""
        rpc_request = build_request(match, body, query)
        if not match.route.streaming:
            return await self._unary(match, rpc_request, metadata)
        _resume_after(request, rpc_request)
        if self.draining:
            return json_error(
                edge_error(
                    code_pb2.UNAVAILABLE,
                    reason="DRAINING",
                    message="this edge is shutting down",
                    http_status=503,
                )
            )
        call = self.rpc(match.route.method)(rpc_request, metadata=metadata)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, call)
        return await self._stream(request, call)

    async def _unary(
        self, match: Match, rpc_request: message.Message, metadata: tuple[tuple[str, str], ...]
    ) -> web.Response:
        method = self.rpc(match.route.method)
        reply = await method(rpc_request, metadata=metadata, timeout=self.unary_timeout)
        return web.Response(text=to_json(reply), content_type="application/json")

    async def _stream(
        self, request: web.Request, call: AsyncIterator[message.Message]
    ) -> web.StreamResponse:
        ndjson = "application/x-ndjson" in request.headers.get("Accept", "")
        framing = "ndjson" if ndjson else "sse"
        relay = self.new_relay(call, framing)
        failure = await relay.start()
        if failure is not None:
            await relay.close()
            return json_error(failure)
        if not ndjson and relay.ended_empty:
            # Nothing after Last-Event-ID and the stream is over: 204 tells an EventSource
            # to stop reconnecting to a session that has ended.
            await relay.close()
            return web.Response(status=204)
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson" if ndjson else "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        sink: Sink = NdjsonSink(response) if ndjson else SseSink(response)
        await self.relay_to(relay, sink, framing)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _websocket(
        self, request: web.Request, call: AsyncIterator[message.Message]
    ) -> web.StreamResponse:
        relay = self.new_relay(call, "websocket")
        failure = await relay.start()
        if failure is not None:
            await relay.close()
            return json_error(failure)
        socket = web.WebSocketResponse(heartbeat=None, autoping=True)
        await socket.prepare(request)
        closed = asyncio.create_task(_until_closed(socket, relay))
        try:
            await self.relay_to(relay, WebSocketSink(socket), "websocket")
        finally:
            closed.cancel()
        if not socket.closed:
            code = WSCloseCode.GOING_AWAY if relay.stopped else WSCloseCode.OK
            await socket.close(code=code)
        return socket

    def new_relay(self, call: AsyncIterator[message.Message], framing: str) -> Relay:
        slow = self.metrics.slow_consumers.labels(framing)
        return Relay(call, self._relay, on_cut_off=slow.inc)

    async def relay_to(self, relay: Relay, sink: Sink, framing: str) -> None:
        self._open.add(relay)
        self.metrics.open_streams.labels(framing).inc()
        try:
            await relay.run(sink)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing more to tell it
        finally:
            self._open.discard(relay)
            self.metrics.open_streams.labels(framing).dec()
            self.metrics.relayed_events.labels(framing).inc(relay.delivered)


async def _until_closed(socket: web.WebSocketResponse, relay: Relay) -> None:
    """Read (and ignore) client messages until it closes, then stop the relay."""
    async for _ in socket:
        pass
    relay.stop()


def credentials(
    request: web.Request, stream_token: list[str] | None
) -> tuple[tuple[str, str], ...]:
    metadata: list[tuple[str, str]] = []
    authorization = request.headers.get("Authorization")
    if authorization:
        metadata.append(("authorization", authorization))
    api_key = request.headers.get("X-API-Key")
    if api_key:
        metadata.append(("x-api-key", api_key))
    if stream_token and not metadata:
        metadata.append(("authorization", f"Bearer {stream_token[-1]}"))
    return tuple(metadata)


def _resume_after(request: web.Request, rpc_request: message.Message) -> None:
    """An event stream (StreamSession, StreamWorkflow, StreamToken) resumes after
    `Last-Event-ID` unless `after_seq` is given."""
    last_event_id = request.headers.get("Last-Event-ID")
    if last_event_id is None or "after_seq" not in rpc_request.DESCRIPTOR.fields_by_name:
        return
    if getattr(rpc_request, "after_seq"):  # noqa: B009 (any of the three request types)
        return
    try:
        setattr(rpc_request, "after_seq", int(last_event_id))  # noqa: B010
    except ValueError:
        raise InvalidArgument.for_field("Last-Event-ID", "must be an event's seq") from None
