"""Server interceptors shared by every service: tracing, metrics + access log, error mapping.

:func:`server_interceptors` returns them in the order they must run: tracing outermost (so
logs and errors carry the trace id), then metrics and the access log (so they see the mapped
status code), then error mapping innermost, next to the handler.

Every response-streaming handler is driven by the interceptors as one coroutine that writes
each message with ``context.write``; both handler styles (async generator, or coroutine
calling ``context.write``) work. Running the whole RPC as one coroutine in one task keeps
span contexts balanced, ends spans and stream gauges promptly on cancellation, and lets an
error raised mid-stream still reach the client as a status after the messages already sent.

The tracer here replaces ``opentelemetry-instrumentation-grpc``'s aio interceptors, which
record ``abort``-ed and cancelled RPCs as OK and break ``context.write``-style streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf.message import Message
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .errors import AgentmeshError, InvalidArgument
from .metrics import RpcMetrics
from .status import to_grpc_status
from .telemetry import current_trace_id
from .wellformed import check_well_formed

__all__ = [
    "QUIET_SERVICES",
    "ErrorMappingInterceptor",
    "MetricsInterceptor",
    "TracingInterceptor",
    "server_interceptors",
    "split_method",
]

# Probes and tooling: counted in metrics, but neither traced nor access-logged at INFO.
QUIET_SERVICES: frozenset[str] = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
)

# Codes that mean the server failed (OTel semantic conventions for gRPC server spans).
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

if TYPE_CHECKING:  # the grpc stubs are generic, the runtime classes are not
    Context = grpc.aio.ServicerContext[Any, Any]
    # A handler behaviour normalised to a coroutine: it returns the response (unary
    # response) or ``None`` after writing every message (streaming response).
    Behavior = Callable[[Any, Context], Awaitable[Any]]
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


def split_method(full_method: str) -> tuple[str, str]:
    """``"/pkg.v1.Svc/Method"`` -> ``("pkg.v1.Svc", "Method")``."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def _normalize(fn: Callable[..., Any], response_streaming: bool) -> Behavior:
    async def behavior(request: Any, context: Context) -> Any:
        result = fn(request, context)
        if not response_streaming:
            return await result if inspect.isawaitable(result) else result
        if hasattr(result, "__aiter__"):
            iterator = result.__aiter__()
            try:
                async for message in iterator:
                    await context.write(message)
            finally:
                aclose = getattr(iterator, "aclose", None)
                if aclose is not None:
                    await aclose()
            return None
        if inspect.isawaitable(result):
            await result  # a coroutine that wrote its messages itself
            return None
        for message in result:  # a plain iterator (sync generator)
            await context.write(message)
        return None

    return behavior


class Undecodable:
    """What a request that does not parse (corrupt bytes, invalid UTF-8, nesting too deep)
    becomes, so the handler chain can answer INVALID_ARGUMENT instead of grpc's UNKNOWN."""

    def __init__(self, message_type: str, error: Exception, size: int) -> None:
        self.message_type = message_type
        self.error = error
        self.size = size  # bytes on the wire

    def as_error(self) -> InvalidArgument:
        what = f"not a valid {self.message_type}" if self.message_type else "not decodable"
        return InvalidArgument.for_field("request", f"the request is {what}: {self.error}")


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None or getattr(deserializer, "_agentmesh_safe", False):
        return deserializer
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", ""))

    def safe(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError, RecursionError, ...
            return Undecodable(message_type, exc, len(data))

    safe._agentmesh_safe = True  # type: ignore[attr-defined]
    return safe


def _admit(request: Any) -> None:
    """INVALID_ARGUMENT for a request that did not parse or holds an unusable value."""
    if isinstance(request, Undecodable):
        raise request.as_error()
    if isinstance(request, Message):
        check_well_formed(request)


async def _checked(requests: Any) -> Any:
    """A client stream whose messages are admitted one by one, where each is read."""
    async for request in requests:
        _admit(request)
        yield request


#: A client stream refused part-way is read to its end, the rest dropped, before the status
#: is sent, within these bounds. Answering while the client still writes races it:
#: grpc-python's client then often fails its next write and reports INTERNAL ("Internal error
#: from Core") instead of the status the server sent.
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
DRAIN_LIMIT_SECONDS = 10.0


async def _drain(requests: Any) -> None:
    """Read and drop what is left of a client stream, until its end or a bound."""
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_LIMIT_SECONDS):
            async for request in requests:
                dropped += request.ByteSize() if isinstance(request, Message) else request.size
                if dropped > DRAIN_LIMIT_BYTES:
                    return


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any], wrap: Callable[[Behavior], Behavior]
) -> grpc.RpcMethodHandler[Any, Any]:
    """Rebuild ``handler`` with its behaviour normalised and passed through ``wrap``."""
    if handler.request_streaming and handler.response_streaming:
        fn, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        fn, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        fn, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        fn, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    if fn is None:
        return handler
    return factory(
        wrap(_normalize(fn, handler.response_streaming)),
        request_deserializer=_safe(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def _final_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ended with, as far as the server can tell."""
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    code: object = context.code()  # None until set_code/abort
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    # An abort, or an exception the error mapper let through: grpc reports UNKNOWN.
    return grpc.StatusCode.UNKNOWN


class _BehaviorInterceptor(_ServerInterceptor):
    """Base: wrap every handler's (normalised) behaviour with :meth:`wrap`."""

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None  # type: ignore[return-value]  # the stub forgets Optional
        method = handler_call_details.method
        streaming = handler.request_streaming or handler.response_streaming
        return _rewrap(handler, lambda behavior: self.wrap(behavior, method, streaming))

    def wrap(self, behavior: Behavior, method: str, streaming: bool) -> Behavior:
        raise NotImplementedError


class TracingInterceptor(_BehaviorInterceptor):
    """Start a SERVER span per RPC, continuing the W3C trace context from the metadata."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        *,
        propagator: TextMapPropagator | None = None,
        excluded_services: Collection[str] = QUIET_SERVICES,
    ) -> None:
        self._tracer = tracer_provider.get_tracer(__name__)
        self._propagator = propagator or TraceContextTextMapPropagator()
        self._excluded = frozenset(excluded_services)

    def wrap(self, behavior: Behavior, method: str, streaming: bool) -> Behavior:
        service, method_name = split_method(method)
        if service in self._excluded:
            return behavior
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method_name}

        async def traced(request: Any, context: Context) -> Any:
            carrier = {
                key: value
                for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)
            }
            parent = self._propagator.extract(carrier)
            with self._tracer.start_as_current_span(
                method.lstrip("/"),
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                error: BaseException | None = None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    if not isinstance(exc, asyncio.CancelledError | grpc.aio.AbortError):
                        span.record_exception(exc)
                    raise
                finally:
                    code = _final_code(context, error)
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    if code in _SERVER_ERROR_CODES:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return traced


class MetricsInterceptor(_BehaviorInterceptor):
    """Count, time and access-log every RPC; track open streams."""

    def __init__(
        self,
        metrics: RpcMetrics,
        *,
        logger: logging.Logger | None = None,
        quiet_services: Collection[str] = QUIET_SERVICES,
    ) -> None:
        self._metrics = metrics
        self._logger = logger or logging.getLogger("agentmesh.access")
        self._quiet = frozenset(quiet_services)

    def wrap(self, behavior: Behavior, method: str, streaming: bool) -> Behavior:
        service, method_name = split_method(method)
        requests = self._metrics.requests
        duration = self._metrics.duration.labels(service, method_name)
        active = self._metrics.active_streams.labels(service, method_name) if streaming else None
        level = logging.DEBUG if service in self._quiet else logging.INFO

        async def observed(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            if active is not None:
                active.inc()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                elapsed = time.perf_counter() - started
                code = _final_code(context, error)
                if active is not None:
                    active.dec()
                requests.labels(service, method_name, code.name).inc()
                duration.observe(elapsed)
                self._logger.log(
                    level,
                    "rpc %s %s %.1fms",
                    method,
                    code.name,
                    elapsed * 1000,
                    extra={
                        "rpc_method": method,
                        "code": code.name,
                        "duration_ms": round(elapsed * 1000, 3),
                        "peer": context.peer(),
                        # Explicit, so the id survives handlers that format records later.
                        "trace_id": current_trace_id() or None,
                    },
                )

        return observed


class ErrorMappingInterceptor(_BehaviorInterceptor):
    """Turn exceptions from handlers into proper statuses; never leak a traceback.

    * :class:`AgentmeshError` -> its mapped code with ``grpc-status-details-bin``
      (``ErrorInfo`` with ``domain``, ``BadRequest``, ``RetryInfo``);
    * ``NotImplementedError`` -> UNIMPLEMENTED "<method> is not implemented yet";
    * anything else -> INTERNAL "internal error (trace <id>)", logged with its traceback.

    Aborts done by the handler itself and cancellation pass through untouched.
    """

    def __init__(self, domain: str, *, logger: logging.Logger | None = None) -> None:
        self._domain = domain
        self._logger = logger or logging.getLogger("agentmesh.errors")

    def wrap(self, behavior: Behavior, method: str, streaming: bool) -> Behavior:
        async def guarded(request: Any, context: Context) -> Any:
            stream = request if hasattr(request, "__aiter__") else None  # a client stream
            try:
                _admit(request)
                return await behavior(request if stream is None else _checked(stream), context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                if stream is not None:
                    await _drain(stream)
                await self._abort(context, method, exc)

        return guarded

    async def _abort(self, context: Context, method: str, exc: Exception) -> None:
        if isinstance(exc, AgentmeshError):
            status = to_grpc_status(exc, self._domain)
            await context.abort(status.code, status.details, status.trailing_metadata)
        if isinstance(exc, NotImplementedError):
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet")
        trace_id = current_trace_id() or "none"
        self._logger.error(
            "unhandled exception in %s",
            method,
            exc_info=exc,
            extra={"rpc_method": method, "trace_id": trace_id},
        )
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (trace {trace_id})")


def server_interceptors(
    *,
    tracer_provider: trace.TracerProvider,
    metrics: RpcMetrics,
    error_domain: str,
) -> Sequence[grpc.aio.ServerInterceptor[Any, Any]]:
    """The standard chain, outermost first: tracing, metrics + access log, error mapping."""
    return [
        TracingInterceptor(tracer_provider),
        MetricsInterceptor(metrics),
        ErrorMappingInterceptor(error_domain),
    ]
