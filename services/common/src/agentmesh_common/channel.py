"""Client channels to other agentmesh services, and the tenant metadata helpers.

:func:`create_channel` gives every channel the same keepalive and message-size options, a
CLIENT span per call whose W3C trace context is injected into the metadata (so the server
span joins the same trace), and a default deadline for unary calls that set none.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import Unauthenticated
from .interceptors import split_method

__all__ = [
    "CHANNEL_OPTIONS",
    "DEFAULT_UNARY_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "RETRY_UNAVAILABLE",
    "TENANT_METADATA_KEY",
    "ClientTLS",
    "ClientTracer",
    "DefaultDeadlineInterceptor",
    "create_channel",
    "tenant_from_context",
    "with_tenant",
]

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
DEFAULT_UNARY_TIMEOUT = 30.0
TENANT_METADATA_KEY = "x-agentmesh-tenant"

CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    # Spread calls over every address a name resolves to (headless Kubernetes Services list
    # each replica); the default pick_first would pin a channel to one replica.
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Services start side by side and connect lazily: a peer that is not up yet is tried
    # again within 100 ms, not after gRPC's default second, growing to at most 1 s: a peer that
    # was restarted (a memory service killed and started again) is used again within about a
    # second of listening, not after up to 5 s (or gRPC's default 120 s). A connect attempt to
    # a port nobody listens on is cheap, so one a second per channel costs nothing.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)

# For channels to a service whose calls are safe to repeat when they never arrived (the memory
# service: writes carry request ids, appends expected sequence numbers): a call answered
# UNAVAILABLE (the peer is starting, restarting or its connection dropped) is tried again by
# gRPC itself, up to 4 times (gRPC's random backoff: within 7.5 s, about 4 s on average)
# before the caller sees the error.
RETRY_UNAVAILABLE = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.5s",
                    "maxBackoff": "4s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

Metadata = Sequence[tuple[str, str | bytes]]


@dataclass(frozen=True)
class ClientTLS:
    """Channel credentials: the CA to trust, and a client certificate for mTLS."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name_override: str | None = None

    @classmethod
    def from_files(
        cls,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        *,
        server_name_override: str | None = None,
    ) -> ClientTLS:
        def read(path: Path | str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(read(ca_file), read(key_file), read(cert_file), server_name_override)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def _details(
    details: grpc.aio.ClientCallDetails,
    *,
    timeout: float | None = None,
    metadata: grpc.aio.Metadata | None = None,
) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails(
        details.method,
        timeout if timeout is not None else details.timeout,
        metadata if metadata is not None else details.metadata,
        details.credentials,
        details.wait_for_ready,
    )


class DefaultDeadlineInterceptor(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Give unary calls without a timeout a default one; streams keep what the caller set."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = _details(client_call_details, timeout=self._timeout)
        return await continuation(client_call_details, request)


class ClientTracer:
    """Starts a CLIENT span per call, ended with the call's final status, and sends the
    W3C ``traceparent`` in the metadata. Use it through :meth:`interceptors`."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        *,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self._tracer = tracer_provider.get_tracer(__name__)
        self._propagator = propagator or TraceContextTextMapPropagator()
        self._pending: set[asyncio.Task[None]] = set()

    def interceptors(self) -> list[Any]:
        """One interceptor per call kind: grpc.aio files each interceptor under only the
        first kind it implements, so one object cannot serve all four."""
        return [
            _UnaryUnaryTracing(self),
            _UnaryStreamTracing(self),
            _StreamUnaryTracing(self),
            _StreamStreamTracing(self),
        ]

    def _start(
        self, details: grpc.aio.ClientCallDetails
    ) -> tuple[Span, grpc.aio.ClientCallDetails]:
        raw: object = details.method  # bytes at runtime (grpc/grpc#31092), str in the stubs
        method = raw.decode() if isinstance(raw, bytes) else str(raw)
        service, method_name = split_method(method)
        span = self._tracer.start_span(
            method.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method_name},
        )
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=trace.set_span_in_context(span))
        metadata = grpc.aio.Metadata()
        for key, value in details.metadata or ():
            if key not in carrier:
                metadata.add(key, value)
        for key, value in carrier.items():
            metadata.add(key, value)
        return span, _details(details, metadata=metadata)

    @staticmethod
    def _end(span: Span, code: grpc.StatusCode, message: str | None) -> None:
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code != grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message or ''}"))
        span.end()

    async def _end_when_done(self, span: Span, call: grpc.aio.Call) -> None:
        try:
            code, message = await call.code(), await call.details()
        except BaseException:
            span.end()
            raise
        self._end(span, code, message)

    def _end_on_completion(self, span: Span, call: grpc.aio.Call) -> None:
        loop = asyncio.get_running_loop()

        def on_done(_: object) -> None:
            # The call is finished, so awaiting its status does not block.
            task = loop.create_task(self._end_when_done(span, call))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        call.add_done_callback(on_done)

    async def unary_response(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        try:
            call = await continuation(details, request)
            code, message = await call.code(), await call.details()
        except asyncio.CancelledError:
            self._end(span, grpc.StatusCode.CANCELLED, "cancelled by the caller")
            raise
        except grpc.aio.AioRpcError as exc:
            self._end(span, exc.code(), exc.details())
            raise
        except BaseException:
            span.end()
            raise
        self._end(span, code, message)
        return call

    async def stream_response(self, continuation: Any, details: Any, request: Any) -> Any:
        span, details = self._start(details)
        try:
            call = await continuation(details, request)
        except BaseException:
            span.end()
            raise
        self._end_on_completion(span, call)
        return call


class _UnaryUnaryTracing(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._tracer.unary_response(continuation, details, request)


class _UnaryStreamTracing(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await self._tracer.stream_response(continuation, details, request)


class _StreamUnaryTracing(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._tracer.unary_response(continuation, details, requests)


class _StreamStreamTracing(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    def __init__(self, tracer: ClientTracer) -> None:
        self._tracer = tracer

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await self._tracer.stream_response(continuation, details, requests)


def create_channel(
    target: str,
    *,
    tracer_provider: trace.TracerProvider,
    tls: ClientTLS | None = None,
    default_timeout: float | None = DEFAULT_UNARY_TIMEOUT,
    options: Iterable[tuple[str, Any]] = (),
    retry_unavailable: bool = False,
) -> grpc.aio.Channel:
    """An aio channel to ``target`` (``host:port``) with the shared options and interceptors.

    ``default_timeout`` (seconds) applies to unary-unary calls made without a timeout;
    ``None`` disables it. ``options`` override :data:`CHANNEL_OPTIONS` by name.
    ``retry_unavailable`` lets gRPC repeat calls answered UNAVAILABLE
    (:data:`RETRY_UNAVAILABLE`): only for a peer whose calls are safe to repeat.
    """
    merged: dict[str, Any] = dict(CHANNEL_OPTIONS)
    if retry_unavailable:
        merged["grpc.service_config"] = RETRY_UNAVAILABLE
        merged["grpc.enable_retries"] = 1
    merged.update(options)
    if tls is not None and tls.server_name_override:
        merged["grpc.ssl_target_name_override"] = tls.server_name_override
    interceptors = ClientTracer(tracer_provider).interceptors()
    if default_timeout is not None:
        interceptors.append(DefaultDeadlineInterceptor(default_timeout))
    channel_options = list(merged.items())
    if tls is None:
        return grpc.aio.insecure_channel(target, options=channel_options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, tls.credentials(), options=channel_options, interceptors=interceptors
    )


def tenant_from_context(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The tenant id sent in the ``x-agentmesh-tenant`` metadata; raises Unauthenticated."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY and isinstance(value, str) and value.strip():
            return value.strip()
    raise Unauthenticated(f"missing {TENANT_METADATA_KEY} metadata", reason="TENANT_MISSING")


def with_tenant(metadata: Metadata | None, tenant: str) -> tuple[tuple[str, str | bytes], ...]:
    """``metadata`` with the tenant entry set to ``tenant`` (replacing any previous one)."""
    if not tenant.strip():
        raise ValueError("tenant must not be empty")
    kept = tuple((key, value) for key, value in metadata or () if key != TENANT_METADATA_KEY)
    return (*kept, (TENANT_METADATA_KEY, tenant.strip()))
