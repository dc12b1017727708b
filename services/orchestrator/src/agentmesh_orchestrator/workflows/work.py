"""Workflows wired into a replica: the engine over the memory service and the orchestrator's
sessions, the due-work loop that runs place agents and schedules, and the app the servicers
call. `start_workflows` is called by the composition root; the loop stops with the stack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from agentmesh.common.v1 import events_pb2, sessions_pb2
from agentmesh.memory.v1 import workflows_pb2 as store_pb2
from agentmesh_orchestrator.adapters.memory_client import MemoryClient
from agentmesh_orchestrator.service import OrchestratorApp
from agentmesh_orchestrator.settings import OrchestratorSettings

from .engine import WorkflowEngine
from .place_agents import PlaceAgentRun
from .scheduler import DueWorkLoop, SchedulerSettings
from .schedules import ScheduleRun
from .service import WorkflowApp

_logger = logging.getLogger("agentmesh.orchestrator.workflows")


class ScheduledSessions:
    """Sessions started by schedules: each runs on in the session manager; this only waits
    for the run to begin (so a crash after the due work is completed never leaves a session
    that nobody starts) and keeps the relay task until the session ends."""

    def __init__(self, app: OrchestratorApp) -> None:
        self._app = app
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, tenant: str, created: sessions_pb2.Session) -> None:
        events = aiter(self._app.run_to_end(tenant, created))
        try:
            await anext(events)
        except StopAsyncIteration:
            return
        task = asyncio.create_task(self._drain(events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _drain(events: AsyncIterator[events_pb2.SessionEvent]) -> None:
        async for _ in events:
            pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)


def start_workflows(
    stack: AsyncExitStack,
    settings: OrchestratorSettings,
    *,
    memory: MemoryClient,
    app: OrchestratorApp,
) -> tuple[WorkflowApp, DueWorkLoop]:
    """The app the servicers call, and the running due-work loop (stopped with the stack;
    stop it first on SIGTERM, so no new work is claimed while the replica drains)."""
    engine = WorkflowEngine(memory, app)
    sessions = ScheduledSessions(app)

    async def handle(item: store_pb2.DueWork, claim: store_pb2.ClaimRef) -> None:
        kind = item.WhichOneof("kind")
        if kind == "place_agent":
            await PlaceAgentRun(engine, item.tenant, item, claim).run()
        elif kind == "schedule":
            await ScheduleRun(engine, app, sessions.start, item.tenant, item, claim).run()
        else:
            _logger.warning("due work %d of an unknown kind; left to expire", item.id)

    loop = DueWorkLoop(
        memory,
        handle,
        SchedulerSettings(
            owner=settings.replica_id or f"orchestrator-{uuid.uuid4().hex[:12]}",
            lease_seconds=settings.workflow_claim_seconds,
            poll_seconds=settings.workflow_poll_seconds,
            lookahead_seconds=settings.workflow_lookahead_seconds,
            max_in_flight=settings.workflow_max_in_flight,
        ),
    )
    engine.set_wake(loop.wake)
    loop.start()
    stack.push_async_callback(sessions.close)
    stack.push_async_callback(loop.stop)
    return WorkflowApp(engine, app.get_agent), loop
