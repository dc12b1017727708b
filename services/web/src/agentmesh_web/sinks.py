"""The framings of an event stream: Server-Sent Events, newline-delimited JSON, WebSocket.

SSE (``text/event-stream``): each event is ``id: <seq>``, ``event: <payload kind>`` (the proto
field name of the event's payload, e.g. ``content_delta``) and ``data: <the event as canonical
JSON>``; keep-alives are comments; a failure is one ``event: stream_error`` whose data is the
error body every HTTP failure has. NDJSON (``application/x-ndjson``): one event per line, a
failure as ``{"error": {...}}``. WebSocket: one text message per event, a failure as
``{"error": {...}}`` followed by a close frame (1013 for a slow consumer, 1011 otherwise).
"""

from __future__ import annotations

from aiohttp import WSCloseCode, web

from agentmesh.common.v1 import events_pb2

from .errors import ErrorReply
from .transcode import to_json

__all__ = ["NdjsonSink", "SseSink", "WebSocketSink", "sse_frame"]


def sse_frame(event: events_pb2.SessionEvent) -> bytes:
    kind = event.WhichOneof("payload") or "event"
    return f"id: {event.seq}\nevent: {kind}\ndata: {to_json(event)}\n\n".encode()


class SseSink:
    """Server-Sent Events on a prepared streaming response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    async def event(self, event: events_pb2.SessionEvent) -> None:
        await self._response.write(sse_frame(event))

    async def keepalive(self) -> None:
        await self._response.write(b": keep-alive\n\n")

    async def error(self, reply: ErrorReply) -> None:
        await self._response.write(f"event: stream_error\ndata: {reply.json()}\n\n".encode())


class NdjsonSink:
    """One JSON document per line on a prepared streaming response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    async def event(self, event: events_pb2.SessionEvent) -> None:
        await self._response.write(to_json(event).encode() + b"\n")

    async def keepalive(self) -> None:
        await self._response.write(b"\n")

    async def error(self, reply: ErrorReply) -> None:
        await self._response.write(b'{"error":' + reply.json().encode() + b"}\n")


class WebSocketSink:
    """Text messages on an open WebSocket."""

    def __init__(self, socket: web.WebSocketResponse) -> None:
        self._socket = socket

    async def event(self, event: events_pb2.SessionEvent) -> None:
        await self._socket.send_str(to_json(event))

    async def keepalive(self) -> None:
        await self._socket.ping()

    async def error(self, reply: ErrorReply) -> None:
        await self._socket.send_str('{"error":' + reply.json() + "}")
        code = WSCloseCode.TRY_AGAIN_LATER if reply.reason == "SLOW_CONSUMER" else 1011
        await self._socket.close(code=code, message=reply.reason.encode()[:120])
