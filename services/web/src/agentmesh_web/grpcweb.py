"""The public API as gRPC-web, for browser clients built on generated stubs (connect-web,
grpc-web): ``POST /agentmesh.orchestrator.v1.OrchestratorService/<Method>``.

Every unary and server-streaming RPC of the services the edge exposes passes through, whether
or not it has an HTTP annotation; other paths (internal services such as memory, unknown
methods) answer UNIMPLEMENTED, and client-streaming RPCs, which gRPC-web cannot carry, too.
The body is one length-prefixed frame (flag byte, 4-byte big-endian length, the request
message); ``application/grpc-web-text`` is the same in base64. The reply is the response
frames, then a trailer frame (flag 0x80) with ``grpc-status``, ``grpc-message`` and
``grpc-status-details-bin`` (the ``google.rpc.Status`` with ErrorInfo, BadRequest, RetryInfo),
so rich errors reach the browser. A call that fails before its first message answers
"trailers-only": the status in the response headers and an empty body.

As on the JSON routes, `authorization` and `x-api-key` are forwarded and bad input is
INVALID_ARGUMENT naming what is wrong. `grpc-timeout` becomes the call's deadline (unary calls
keep the edge's `unary_timeout` as an upper bound). Streams go through the same
:class:`~.streams.Relay` as SSE: bounded buffer, a slow client cut off with SLOW_CONSUMER
(naming the seq to resume after), and a drained edge ends them with UNAVAILABLE DRAINING; a
stream always ends with real trailers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import struct
import urllib.parse
from collections.abc import Sequence

import grpc
from aiohttp import web
from google.protobuf import descriptor, message
from google.rpc import code_pb2, status_pb2

from agentmesh.common.v1 import events_pb2
from agentmesh_common import AgentmeshError, InvalidArgument

from .edge import Edge, credentials
from .errors import ErrorReply, edge_error, from_exception, from_rpc_error
from .middleware import json_error
from .transcode import message_class

__all__ = ["GRPC_WEB_PATH", "GrpcWeb", "frame", "parse_timeout", "trailers"]

#: The route of every gRPC-web call: `/<package.Service>/<Method>`.
GRPC_WEB_PATH = r"/{service:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+}/{method:[A-Za-z_]\w*}"

_BINARY = ("application/grpc-web", "application/grpc-web+proto")
_TEXT = ("application/grpc-web-text", "application/grpc-web-text+proto")
_TRAILER_FLAG = 0x80
_HEADER = struct.Struct(">BI")
_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# grpc-message is percent-encoded: everything outside printable ASCII, and '%' itself.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def frame(payload: bytes, flag: int = 0) -> bytes:
    """One gRPC-web frame: flag byte, big-endian length, payload."""
    return _HEADER.pack(flag, len(payload)) + payload


def trailers(status: status_pb2.Status) -> dict[str, str]:
    """The grpc-status, grpc-message and grpc-status-details-bin of a status."""
    fields = {"grpc-status": str(status.code)}
    if status.message:
        fields["grpc-message"] = urllib.parse.quote(status.message, safe=_MESSAGE_SAFE)
    if status.details:
        fields["grpc-status-details-bin"] = base64.b64encode(status.SerializeToString()).decode()
    return fields


def _trailer_frame(status: status_pb2.Status) -> bytes:
    block = "".join(f"{name}: {value}\r\n" for name, value in trailers(status).items())
    return frame(block.encode("ascii"), _TRAILER_FLAG)


def parse_timeout(value: str | None) -> float | None:
    """Seconds of a `grpc-timeout` header (``1500m``, ``30S``), or None without one."""
    if value is None:
        return None
    found = _TIMEOUT.match(value.strip())
    if found is None:
        raise InvalidArgument.for_field(
            "grpc-timeout", "must be 1 to 8 digits and a unit (H, M, S, m, u, n), e.g. 1500m"
        )
    return int(found.group(1)) * _UNITS[found.group(2)]


def _decode_request(body: bytes, request_type: descriptor.Descriptor) -> message.Message:
    if len(body) < _HEADER.size:
        raise InvalidArgument.for_field(
            "body",
            f"must be one gRPC-web frame (5-byte header, then the message); got {len(body)} bytes",
        )
    flag, length = _HEADER.unpack_from(body)
    if flag & _TRAILER_FLAG or flag & 0x7E:
        raise InvalidArgument.for_field("body", f"frame flag {flag:#04x} is not a message frame")
    if flag & 1:
        raise InvalidArgument.for_field(
            "body", "compressed frames are not accepted; send the message uncompressed"
        )
    if len(body) != _HEADER.size + length:
        raise InvalidArgument.for_field(
            "body",
            f"the frame says {length} bytes but {len(body) - _HEADER.size} follow"
            " (one request message per call)",
        )
    try:
        return message_class(request_type).FromString(body[_HEADER.size :])
    except message.DecodeError as error:
        raise InvalidArgument.for_field(
            "body", f"is not a {request_type.full_name}: {error}"
        ) from None


class _Writer:
    """Writes frames to the response, in base64 for grpc-web-text (each write padded, as
    Envoy's filter does, so a reader decodes every chunk as it comes)."""

    def __init__(self, response: web.StreamResponse, text: bool) -> None:
        self._response = response
        self._text = text
        self.ended = False

    async def write(self, data: bytes) -> None:
        await self._response.write(base64.b64encode(data) if self._text else data)

    async def end(self, status: status_pb2.Status) -> None:
        self.ended = True
        await self.write(_trailer_frame(status))


class _FrameSink:
    """A :class:`~.streams.Sink` writing each event as a response frame of `reply_type`."""

    def __init__(self, writer: _Writer, reply_type: type[message.Message]) -> None:
        self._writer = writer
        self._reply_type = reply_type

    async def event(self, event: events_pb2.SessionEvent) -> None:
        reply = self._reply_type(event=event)
        await self._writer.write(frame(reply.SerializeToString()))

    async def keepalive(self) -> None:
        # gRPC-web has no frame that carries nothing; an idle stream stays silent (a client
        # whose proxy cuts it resumes after its last seq).
        return None

    async def error(self, reply: ErrorReply) -> None:
        await self._writer.end(reply.status)


class GrpcWeb:
    """The gRPC-web handler over the edge's orchestrator stub and stream relays."""

    def __init__(self, edge: Edge, services: Sequence[descriptor.ServiceDescriptor]) -> None:
        self._edge = edge
        self._services = {service.full_name: service for service in services}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(GRPC_WEB_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        content_type = request.content_type
        if content_type not in _BINARY + _TEXT:
            return json_error(
                edge_error(
                    code_pb2.INVALID_ARGUMENT,
                    reason="UNSUPPORTED_MEDIA_TYPE",
                    message=f"{content_type or 'no content type'}: this path takes gRPC-web"
                    f" ({', '.join(_BINARY + _TEXT)})",
                    http_status=415,
                )
            )
        text = content_type in _TEXT
        request["route"] = "grpc-web"
        try:
            method = self._method(request.match_info["service"], request.match_info["method"])
            request["route"] = f"grpc-web {method.name}"
            return await self._call(request, method, text)
        except _Refusal as refusal:
            return _trailers_only(refusal.reply.status, text)
        except AgentmeshError as error:
            return _trailers_only(from_exception(error).status, text)
        except grpc.RpcError as error:
            return _trailers_only(from_rpc_error(error).status, text)
        except web.HTTPRequestEntityTooLarge as error:
            reply = edge_error(
                code_pb2.INVALID_ARGUMENT,
                reason="REQUEST_TOO_LARGE",
                message=error.text or "the request is too large",
                http_status=413,
            )
            return _trailers_only(reply.status, text)

    def _method(self, service_name: str, method_name: str) -> descriptor.MethodDescriptor:
        service = self._services.get(service_name)
        method = None if service is None else service.methods_by_name.get(method_name)
        if method is None:
            raise _unimplemented(
                "UNKNOWN_METHOD",
                f"/{service_name}/{method_name} is not a method of this edge's public API"
                f" ({', '.join(sorted(self._services))})",
            )
        if method.client_streaming:
            raise _unimplemented(
                "CLIENT_STREAMING_NOT_SUPPORTED",
                f"{method.full_name} streams requests, which gRPC-web cannot carry;"
                " call it over gRPC (HTTP/2)",
            )
        return method

    async def _call(
        self, request: web.Request, method: descriptor.MethodDescriptor, text: bool
    ) -> web.StreamResponse:
        body = await request.read()
        if text:
            try:
                body = base64.b64decode(body, validate=True)
            except binascii.Error:
                raise InvalidArgument.for_field(
                    "body", "is not base64 (application/grpc-web-text)"
                ) from None
        rpc_request = _decode_request(body, method.input_type)
        timeout = parse_timeout(request.headers.get("grpc-timeout"))
        metadata = credentials(request, None)
        multicallable = self._edge.rpc(method)
        if not method.server_streaming:
            limit = self._edge.unary_timeout
            reply = await multicallable(
                rpc_request,
                metadata=metadata,
                timeout=limit if timeout is None else min(timeout, limit),
            )
            response = web.StreamResponse(headers=_headers(text))
            await response.prepare(request)
            writer = _Writer(response, text)
            await writer.write(frame(reply.SerializeToString()))
            await writer.end(status_pb2.Status(code=code_pb2.OK))
            await response.write_eof()
            return response
        if self._edge.draining:
            raise _draining()
        call = multicallable(rpc_request, metadata=metadata, timeout=timeout)
        relay = self._edge.new_relay(call, "grpc-web")
        failure = await relay.start()
        if failure is not None:
            await relay.close()
            return _trailers_only(failure.status, text)
        response = web.StreamResponse(headers=_headers(text))
        await response.prepare(request)
        writer = _Writer(response, text)
        await self._edge.relay_to(
            relay, _FrameSink(writer, message_class(method.output_type)), "grpc-web"
        )
        with contextlib.suppress(ConnectionError):
            if not writer.ended:
                # Ended without an error frame: the call is over (OK), or the edge is
                # draining, which the client must see to resume elsewhere.
                status = (
                    _draining().reply.status
                    if relay.stopped
                    else status_pb2.Status(code=code_pb2.OK)
                )
                await writer.end(status)
            await response.write_eof()
        return response


def _headers(text: bool) -> dict[str, str]:
    return {
        "Content-Type": _TEXT[0] if text else _BINARY[1],
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }


def _trailers_only(status: status_pb2.Status, text: bool) -> web.Response:
    headers = _headers(text)
    headers.update(trailers(status))
    return web.Response(status=200, headers=headers)


class _Refusal(Exception):
    """A gRPC-web refusal of the edge itself (carried as trailers, not JSON)."""

    def __init__(self, reply: ErrorReply) -> None:
        super().__init__(reply.status.message)
        self.reply = reply


def _unimplemented(reason: str, text: str) -> _Refusal:
    return _Refusal(
        edge_error(code_pb2.UNIMPLEMENTED, reason=reason, message=text, http_status=501)
    )


def _draining() -> _Refusal:
    return _Refusal(
        edge_error(
            code_pb2.UNAVAILABLE,
            reason="DRAINING",
            message="this edge is shutting down; resume after your last seq",
            http_status=503,
        )
    )
