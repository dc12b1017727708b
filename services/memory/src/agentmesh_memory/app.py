"""Composition root of the memory service: settings, database, notifier, stores, servicer.

Resources open in order on the exit stack (and close in reverse): the engine, the schema
check or migration, the event notifiers of sessions and of workflows (a LISTEN connection
each on PostgreSQL), the background
sweeper of expired memory, and, once the server is up, the database health monitor that
reports NOT_SERVING while the database is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from functools import partial
from typing import Any

from agentmesh.memory.v1 import memory_pb2_grpc, workflows_pb2_grpc
from agentmesh_common import Registration, ServiceServer, Telemetry

from .db import Database, DatabaseOptions, EventNotifier, LocalNotifier, PostgresNotifier
from .db.migrate import ensure_schema, migrate
from .db.notifier import WORKFLOW_CHANNEL
from .servicer import MemoryServicer
from .servicer_workflows import WorkflowStoreServicer
from .settings import MemorySettings
from .store import Stores, WorkflowStores

SERVICE_NAME = "memory"
GRPC_SERVICE = "agentmesh.memory.v1.MemoryService"
WORKFLOW_SERVICE = "agentmesh.memory.v1.WorkflowStoreService"

_logger = logging.getLogger("agentmesh.memory")


def open_database(settings: MemorySettings, telemetry: Telemetry) -> Database:
    return Database.open(
        settings.database_url.get_secret_value(),
        DatabaseOptions(
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_timeout_seconds=settings.pool_timeout_seconds,
            pool_recycle_seconds=settings.pool_recycle_seconds,
            statement_timeout_seconds=settings.statement_timeout_seconds,
        ),
        metrics=telemetry.metrics,
    )


def _background(
    stack: AsyncExitStack, work: Callable[[], Coroutine[Any, Any, None]], name: str
) -> None:
    task: asyncio.Task[None] = asyncio.create_task(work(), name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


async def _sweep_forever(
    stores: Stores, workflow_stores: WorkflowStores, settings: MemorySettings
) -> None:
    retention = timedelta(seconds=settings.request_id_retention_seconds)
    while True:
        await asyncio.sleep(settings.sweep_interval_seconds)
        try:
            memories, requests = await stores.memories.sweep(retention)
            retained = await stores.insights.sweep_retention()
            outcomes, runs = await workflow_stores.sweep(retention)
            if memories or requests or retained or outcomes or runs:
                _logger.info(
                    "swept expired rows",
                    extra={
                        "memories": memories,
                        "request_ids": requests,
                        "memories_past_retention": retained,
                        "fire_outcomes": outcomes,
                        "ended_schedule_runs": runs,
                    },
                )
        except Exception:  # the next round retries; health reports a dead database
            _logger.warning("sweep failed", exc_info=True)


class HealthMonitor:
    """Pings the database and reports the server NOT_SERVING while it does not answer."""

    def __init__(self, db: Database, interval: float, timeout: float) -> None:
        self._db = db
        self._interval = interval
        self._timeout = timeout
        self.serving: bool | None = None

    async def run(self, server: ServiceServer) -> None:
        while True:
            healthy = await self._db.ping(self._timeout)
            if healthy != self.serving:
                if self.serving is not None or not healthy:
                    _logger.warning("database %s", "reachable again" if healthy else "unreachable")
                self.serving = healthy
                for name in ("", GRPC_SERVICE, WORKFLOW_SERVICE):
                    await server.set_serving(name, healthy)
            await asyncio.sleep(self._interval)


async def _end_key_watches(server: ServiceServer, stores: Stores) -> None:
    """Once the server stops, end the replicas' key watches: they re-open them on another
    memory replica at once, instead of holding this one's drain for its grace period."""
    await server.stopping.wait()
    stores.api_keys.end_watches()


async def build(
    stack: AsyncExitStack, settings: MemorySettings, telemetry: Telemetry
) -> Sequence[Registration]:
    """Open the service's resources on `stack` and return what to serve."""
    db = open_database(settings, telemetry)
    stack.push_async_callback(db.close)
    if settings.migrate_on_start:
        await migrate(db)
    else:
        await ensure_schema(db)

    notifier: EventNotifier = (
        PostgresNotifier(db.url) if db.dialect == "postgresql" else LocalNotifier()
    )
    await notifier.start()
    stack.push_async_callback(notifier.close)
    workflow_notifier: EventNotifier = (
        PostgresNotifier(db.url, channel=WORKFLOW_CHANNEL)
        if db.dialect == "postgresql"
        else LocalNotifier()
    )
    await workflow_notifier.start()
    stack.push_async_callback(workflow_notifier.close)

    stores = Stores.build(
        db,
        notifier,
        watch_poll_seconds=settings.watch_poll_seconds,
        max_document_bytes=settings.max_document_bytes,
    )

    monitor = HealthMonitor(
        db,
        settings.health_check_interval_seconds,
        timeout=min(settings.health_check_interval_seconds, 5.0),
    )

    async def start_monitor(server: ServiceServer) -> None:
        _background(stack, partial(monitor.run, server), "memory-health")
        _background(stack, partial(_end_key_watches, server, stores), "memory-key-watches")

    workflow_stores = WorkflowStores.build(
        db, workflow_notifier, watch_poll_seconds=settings.watch_poll_seconds
    )
    _background(stack, partial(_sweep_forever, stores, workflow_stores, settings), "memory-sweeper")
    servicer = MemoryServicer(stores)
    workflow_servicer = WorkflowStoreServicer(workflow_stores)
    return [
        Registration(
            GRPC_SERVICE,
            partial(memory_pb2_grpc.add_MemoryServiceServicer_to_server, servicer),
            on_started=start_monitor,
        ),
        Registration(
            WORKFLOW_SERVICE,
            partial(
                workflows_pb2_grpc.add_WorkflowStoreServiceServicer_to_server, workflow_servicer
            ),
        ),
    ]
