"""The entry point every service's ``__main__`` calls.

A service supplies its settings class and one async ``build`` function, the composition
root, which registers every resource it opens on the exit stack and returns what to serve::

    async def build(
        stack: AsyncExitStack, settings: MemorySettings, telemetry: Telemetry
    ) -> Sequence[Registration]:
        engine = await stack.enter_async_context(open_engine(settings.database_url))
        servicer = MemoryServicer(MemoryService(engine))
        return [Registration(MEMORY_SERVICE, partial(add_MemoryServicer_to_server, servicer))]

    if __name__ == "__main__":
        raise SystemExit(run("memory", MemorySettings, build))

:func:`run` reads the settings once (a bad value: one line on stderr, exit code 2),
configures JSON logging and tracing, builds the app, starts the gRPC server and the metrics
endpoint, and announces ``{"message": "service started", "port": N, "metrics_port": M}``
(a log line on stderr, and the same JSON on stdout for a parent process). On SIGTERM or
SIGINT it reports NOT_SERVING, stops accepting RPCs, lets in-flight ones finish within
``grace_seconds`` (then cancels them) while each registration's ``on_stopping`` drains the
work it owns, closes the exit stack in reverse order, flushes the
tracer and returns 0. :func:`serve` is the same lifecycle without the process setup.

A process started with ``AGENTMESH_PARENT_PID`` (``agentmesh up`` and the tests set it) shuts
down the same way when that process dies, so a parent killed with SIGKILL leaves no orphans.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from typing import TypeVar

from .metrics import start_metrics_server
from .netguard import install_from_environment
from .server import Registration, ServiceServer, build_server
from .settings import ServiceSettings, SettingsError, load_settings
from .telemetry import Telemetry, configure_logging, setup_tracing

__all__ = ["Build", "Started", "run", "serve"]

S = TypeVar("S", bound=ServiceSettings)

Build = Callable[[AsyncExitStack, S, Telemetry], Awaitable[Sequence[Registration]]]
"""The composition root: open resources on the stack, return the services to serve."""

Started = Callable[[ServiceServer, int | None], None]
"""Called once serving, with the server (``.port``) and the metrics port (or None)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_SETTINGS = 2
EXIT_INTERRUPTED = 130

_logger = logging.getLogger("agentmesh.runtime")

PARENT_PID_VAR = "AGENTMESH_PARENT_PID"
PARENT_POLL_SECONDS = 0.5


async def serve(
    service_name: str,
    settings: S,
    build: Build[S],
    *,
    telemetry: Telemetry,
    stop: asyncio.Event | None = None,
    on_started: Started | None = None,
    parent_pid: int | None = None,
) -> None:
    """Build and serve until ``stop`` is set (SIGTERM/SIGINT set it, and the death of
    ``parent_pid`` when given), then shut down."""
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    orphan_watch = (
        asyncio.create_task(_stop_when_orphaned(parent_pid, stop))
        if parent_pid is not None
        else None
    )
    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests) or no signal support
    try:
        async with AsyncExitStack() as stack:
            registrations = await build(stack, settings, telemetry)
            server = build_server(
                service_name=service_name,
                settings=settings,
                registrations=registrations,
                tracer_provider=telemetry.tracer_provider,
                registry=telemetry.registry,
            )
            # On any exit the server stops before the resources its handlers use close.
            stack.push_async_callback(server.stop)
            await server.start()
            for registration in registrations:
                if registration.on_started is not None:
                    await registration.on_started(server)
            metrics_port: int | None = None
            if settings.metrics_port is not None:
                metrics_port, stop_metrics = start_metrics_server(
                    telemetry.registry, settings.host, settings.metrics_port
                )
                stack.push_async_callback(asyncio.to_thread, stop_metrics)
            _announce(service_name, server, metrics_port)
            if on_started is not None:
                on_started(server, metrics_port)

            await stop.wait()
            _logger.info("service stopping", extra={"grace_seconds": server.grace_seconds})
            await asyncio.gather(
                server.stop(),
                *(r.on_stopping() for r in registrations if r.on_stopping is not None),
            )
        _logger.info("service stopped")
    finally:
        if orphan_watch is not None:
            orphan_watch.cancel()
        for signum in handled:
            loop.remove_signal_handler(signum)


async def _stop_when_orphaned(parent_pid: int, stop: asyncio.Event) -> None:
    # No event tells a child that its parent died: poll.
    while os.getppid() == parent_pid:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_POLL_SECONDS)
    _logger.warning("the parent process %d is gone; stopping", parent_pid)
    stop.set()


def _parent_pid(environ: Mapping[str, str]) -> int | None:
    value = environ.get(PARENT_PID_VAR, "").strip()
    return int(value) if value.isdigit() else None


def _announce(service_name: str, server: ServiceServer, metrics_port: int | None) -> None:
    facts = {"port": server.port, "metrics_port": metrics_port, "services": server.service_names}
    _logger.info("service started", extra=facts)
    line = {"message": "service started", "service": service_name, **facts}
    print(json.dumps(line), flush=True)


def run(
    service_name: str,
    settings_cls: type[S],
    build: Build[S],
    *,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run a service process to completion; returns the exit code (0, 1 or 2)."""
    install_from_environment()
    try:
        settings = load_settings(settings_cls, environ)
    except SettingsError as exc:
        print(f"{service_name}: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_SETTINGS
    configure_logging(service_name, settings.log_level)
    telemetry = Telemetry(
        service_name=service_name,
        tracer_provider=setup_tracing(service_name, settings.otlp_endpoint),
    )
    try:
        parent_pid = _parent_pid(os.environ if environ is None else environ)
        asyncio.run(
            serve(service_name, settings, build, telemetry=telemetry, parent_pid=parent_pid)
        )
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_INTERRUPTED
    except Exception:
        _logger.exception("service failed")
        return EXIT_FAILED
    finally:
        telemetry.tracer_provider.shutdown()
    return EXIT_OK
