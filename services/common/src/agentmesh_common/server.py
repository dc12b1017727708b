"""The gRPC server every service runs: health, reflection, interceptors, TLS, lifecycle.

>>> server = build_server(service_name="memory", settings=settings,
...                       registrations=[Registration("agentmesh.memory.v1.Memory", add)],
...                       tracer_provider=provider, registry=registry)
>>> await server.start(); server.port
>>> await server.stop()          # health NOT_SERVING first, then drain; safe to call twice
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.trace import TracerProvider
from prometheus_client import CollectorRegistry

from .channel import MAX_MESSAGE_BYTES
from .interceptors import server_interceptors
from .metrics import RpcMetrics
from .reflection import Health, enable_reflection
from .settings import ServiceSettings

__all__ = ["HEALTH_SERVICE_NAME", "SERVER_OPTIONS", "Registration", "ServiceServer", "build_server"]

HEALTH_SERVICE_NAME = "grpc.health.v1.Health"

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Accept the clients' 30 s keepalive pings, even on idle connections.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
    ("grpc.http2.max_ping_strikes", 0),
)


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full name and how to add it to the server.

    ``on_started``, when given, is awaited once the server is serving, with the server: a
    service that watches a dependency uses it to report its health (``set_serving``).
    ``on_stopping``, when given, is awaited on SIGTERM alongside the server's own drain (before
    the exit stack closes anything): a service with work of its own in flight (the
    orchestrator's sessions) stops it there, so its RPCs can end within the grace period.
    """

    service_name: str
    add_to_server: Callable[[grpc.aio.Server], None]
    on_started: Callable[[ServiceServer], Awaitable[None]] | None = None
    on_stopping: Callable[[], Awaitable[None]] | None = None

    @classmethod
    def from_handler(cls, handler: grpc.ServiceRpcHandler[Any, Any]) -> Registration:
        """Register a generic handler such as ``grpc.method_handlers_generic_handler(...)``."""

        def add(server: grpc.aio.Server) -> None:
            server.add_generic_rpc_handlers([handler])

        return cls(handler.service_name(), add)


def _server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = settings.tls_key_file.read_bytes()
    chain = settings.tls_cert_file.read_bytes()
    ca = settings.tls_ca_file.read_bytes() if settings.tls_ca_file is not None else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


class ServiceServer:
    """A ``grpc.aio.Server`` with its health servicer and a lifecycle safe to drive twice."""

    def __init__(
        self,
        *,
        server: grpc.aio.Server,
        health: Any,
        service_names: Sequence[str],
        address: str,
        credentials: grpc.ServerCredentials | None,
        grace_seconds: float,
        shutdown_notice_seconds: float = 0.0,
    ) -> None:
        self._server = server
        self._health = health
        self.service_names: tuple[str, ...] = tuple(service_names)
        self._address = address
        self._credentials = credentials
        self.grace_seconds = grace_seconds
        self.shutdown_notice_seconds = shutdown_notice_seconds
        self._port: int | None = None
        self._stopping: asyncio.Future[None] | None = None
        # Set when stop begins: long-lived streams that would only hold the drain (watches a
        # client re-opens elsewhere) end on it instead of waiting out the grace period.
        self.stopping = asyncio.Event()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); only known after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def grpc_server(self) -> grpc.aio.Server:
        return self._server

    async def start(self) -> None:
        """Bind, start serving, then report every service SERVING."""
        if self._port is not None:
            raise RuntimeError("server already started")
        if self._credentials is None:
            port = self._server.add_insecure_port(self._address)
        else:
            port = self._server.add_secure_port(self._address, self._credentials)
        if port == 0:
            raise RuntimeError(f"could not bind {self._address}")
        await self._server.start()
        self._port = port
        for name in ("", *self.service_names):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def set_serving(self, service_name: str, serving: bool) -> None:
        """Report one service (or ``""``, the whole server) SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self._health.set(service_name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING (and keep serving :attr:`shutdown_notice_seconds` so pollers
        notice), stop accepting RPCs, give in-flight ones ``grace`` seconds (default
        :attr:`grace_seconds`), then cancel the rest. Safe to call twice, and concurrently."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(
                self._stop(self.grace_seconds if grace is None else grace)
            )
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        self.stopping.set()
        await self._health.enter_graceful_shutdown()
        if self.shutdown_notice_seconds > 0:
            await asyncio.sleep(self.shutdown_notice_seconds)
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until the server has stopped; returns True if ``timeout`` passed first.

        Cancelling this wait does not disturb a shutdown in progress (grpc's own
        ``wait_for_termination`` shares a future with ``stop``; cancelling it breaks stop).
        """
        return await asyncio.shield(self._server.wait_for_termination(timeout))


def build_server(
    *,
    service_name: str,
    settings: ServiceSettings,
    registrations: Iterable[Registration],
    tracer_provider: TracerProvider,
    registry: CollectorRegistry,
    grace_seconds: float | None = None,
    error_domain: str | None = None,
    options: Iterable[tuple[str, Any]] = (),
) -> ServiceServer:
    """A server for ``registrations`` with health, reflection and the shared interceptors.

    Binds ``settings.host:settings.port`` (TLS when cert and key are configured, mTLS when a
    CA is too). ``error_domain`` (default ``agentmesh.<service_name>``) is the ``ErrorInfo``
    domain of mapped errors.
    """
    registrations = list(registrations)
    merged: dict[str, Any] = dict(SERVER_OPTIONS)
    merged.update(options)
    server = grpc.aio.server(
        interceptors=server_interceptors(
            tracer_provider=tracer_provider,
            metrics=RpcMetrics(registry),
            error_domain=error_domain or f"agentmesh.{service_name}",
        ),
        options=list(merged.items()),
    )
    health = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for registration in registrations:
        registration.add_to_server(server)
    service_names = [registration.service_name for registration in registrations]
    enable_reflection([*service_names, HEALTH_SERVICE_NAME], server)
    host = settings.host
    address = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
    return ServiceServer(
        server=server,
        health=health,
        service_names=service_names,
        address=address,
        credentials=_server_credentials(settings),
        grace_seconds=settings.grace_seconds if grace_seconds is None else grace_seconds,
        shutdown_notice_seconds=settings.shutdown_notice_seconds,
    )
