"""Sessions running on this replica: leases, background runs, streams, messages, cancel.

A `Run`, `Step` or `Execute` call takes the session's lease in the memory service (another
replica holding an unexpired lease makes it FAILED_PRECONDITION), starts the engine as a
background task, and renews the lease every third of its time to live. The caller's stream is
fed from the memory service's event log (`WatchEvents`), so what a client sees has always been
stored first, and `StreamSession` on any replica sees the same events in the same order.

A replica whose lease renewal fails stops the run without a terminal event (the new owner goes
on). `resume_expired` lets a replica adopt RUNNING sessions whose lease expired (their owner
died): it re-reads them and runs them again with `resumed=True`; model calls already recorded
as complete are not repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agentmesh.common.v1 import events_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition, current_trace_id

from .agents import SessionAgent
from .engine import SessionEngine, SessionRun
from .observability import OrchestratorMetrics
from .tools import Tool

_logger = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"session_completed", "session_failed", "session_cancelled"})
ACTIVE = (sessions_pb2.SESSION_STATUS_PENDING, sessions_pb2.SESSION_STATUS_RUNNING)

AgentResolver = Callable[[str, sessions_pb2.Session], Awaitable[list[SessionAgent]]]


@dataclass(frozen=True)
class LeaseSettings:
    """How long a lease lives and how often it is renewed."""

    ttl_seconds: float = 15.0

    @property
    def renew_every(self) -> float:
        return self.ttl_seconds / 3


@dataclass
class ActiveSession:
    """A session this replica is running."""

    tenant: str
    run: SessionRun
    task: asyncio.Task[sessions_pb2.Session] | None = None
    renewer: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class SessionStoreApi(Protocol):
    """What the manager needs from the memory service beyond the engine's `SessionStore`."""

    async def get_session(self, tenant: str, name: str) -> sessions_pb2.Session: ...

    def watch_events(
        self, tenant: str, session: str, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]: ...

    async def acquire_lease(
        self, tenant: str, session: str, owner: str, ttl_seconds: float
    ) -> memory_pb2.AcquireLeaseResponse: ...

    async def renew_lease(
        self, tenant: str, session: str, owner: str, ttl_seconds: float
    ) -> memory_pb2.Lease: ...

    async def release_lease(self, tenant: str, session: str, owner: str) -> None: ...

    async def append_messages(
        self,
        tenant: str,
        session: str,
        messages: Sequence[memory_pb2.StoredMessage],
        request_id: str = "",
    ) -> None: ...

    async def append_events(
        self, tenant: str, session: str, events: Sequence[events_pb2.SessionEvent]
    ) -> int: ...


class SessionManager:
    """Runs sessions on this replica and streams their events."""

    def __init__(
        self,
        *,
        engine: SessionEngine,
        store: SessionStoreApi,
        resolve_agents: AgentResolver,
        owner: str | None = None,
        lease: LeaseSettings | None = None,
        metrics: OrchestratorMetrics | None = None,
        tools_for: Callable[[str], Awaitable[Mapping[str, Tool]]] | None = None,
    ) -> None:
        self._metrics = metrics
        self._tools_for = tools_for
        self._engine = engine
        self._store = store
        self._resolve_agents = resolve_agents
        self.owner = owner or f"orchestrator-{uuid.uuid4().hex[:12]}"
        self._lease = lease or LeaseSettings()
        self._active: dict[tuple[str, str], ActiveSession] = {}
        self.takeovers = 0

    @property
    def active_count(self) -> int:
        return len(self._active)

    def is_running(self, tenant: str, session: str) -> bool:
        active = self._active.get((tenant, session))
        return active is not None and active.task is not None and not active.task.done()

    async def run(
        self, tenant: str, session_name: str, *, single_step: bool = False
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Run (or step) the session here and yield its events as they are stored."""
        session = await self._store.get_session(tenant, session_name)
        if session.status not in ACTIVE:
            raise FailedPrecondition(
                f"{session_name} has ended ({sessions_pb2.SessionStatus.Name(session.status)})",
                reason="SESSION_ENDED",
            )
        if self.is_running(tenant, session_name):
            raise FailedPrecondition(
                f"{session_name} is already running; use StreamSession to follow it",
                reason="SESSION_BUSY",
            )
        active = await self._start(tenant, session, single_step=single_step, resumed=False)
        ended = False
        async for event in self._relay(active, after_seq=session.last_event_seq):
            ended = event.WhichOneof("payload") in TERMINAL_EVENTS
            yield event
        task = active.task
        if not ended and task is not None and task.done() and not task.cancelled():
            failure = task.exception()
            if failure is not None:
                raise failure  # mapped to a status by the interceptor; never a silent end

    async def stream(
        self, tenant: str, session_name: str, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Replay then tail a session's events from the log (works on any replica)."""
        async for event in self._store.watch_events(tenant, session_name, after_seq):
            yield event

    async def cancel(self, tenant: str, session_name: str, reason: str = "cancel_session") -> bool:
        """Cancel a session running here; False when it is not running on this replica."""
        active = self._active.get((tenant, session_name))
        if active is None or active.task is None or active.task.done():
            return False
        active.run.cancel_reason = reason
        active.task.cancel()
        await active.done.wait()
        return True

    async def send_message(
        self, tenant: str, session_name: str, content: str, *, interrupt: bool, reject_if_busy: bool
    ) -> str:
        """Deliver a user message; returns DELIVERED, ENQUEUED or INTERRUPTED."""
        active = self._active.get((tenant, session_name))
        busy = active is not None and active.task is not None and not active.task.done()
        if not busy:
            await self._store.append_messages(
                tenant,
                session_name,
                [
                    memory_pb2.StoredMessage(
                        message=messages_pb2.Message(role=messages_pb2.ROLE_USER, content=content)
                    )
                ],
            )
            await self._store.append_events(
                tenant,
                session_name,
                [_stamped(session_name, events_pb2.UserMessage(content=content))],
            )
            return "DELIVERED"
        if reject_if_busy:
            raise FailedPrecondition(
                f"{session_name} is busy with a turn; retry later or use ENQUEUE or INTERRUPT",
                reason="SESSION_BUSY",
            )
        assert active is not None
        await active.run.recorder.emit(
            _stamped(session_name, events_pb2.UserMessage(content=content))
        )
        active.run.inbox.put_nowait(content)
        if interrupt and active.run.interrupt():
            return "INTERRUPTED"
        return "ENQUEUED"

    async def resume_expired(self, candidates: Sequence[tuple[str, sessions_pb2.Session]]) -> int:
        """Adopt RUNNING sessions whose lease expired; returns how many were resumed."""
        resumed = 0
        for tenant, session in candidates:
            if (tenant, session.name) in self._active:
                continue
            try:
                await self._start(tenant, session, single_step=False, resumed=True)
            except FailedPrecondition:
                continue  # another replica was faster
            resumed += 1
            self.takeovers += 1
            if self._metrics is not None:
                self._metrics.lease_takeovers.inc()
        return resumed

    async def watch_for_orphans(
        self,
        find: Callable[[], Awaitable[Sequence[tuple[str, sessions_pb2.Session]]]],
        interval_seconds: float,
    ) -> None:
        """Forever: every `interval_seconds`, resume the sessions `find` reports orphaned."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                resumed = await self.resume_expired(await find())
            except Exception:
                _logger.exception("looking for orphaned sessions failed; trying again later")
                continue
            if resumed:
                _logger.info("resumed %d orphaned session(s)", resumed)

    async def shutdown(self) -> None:
        """Stop every run here without ending the sessions: another replica resumes them."""
        for active in list(self._active.values()):
            active.run.abandoned = True
            if active.task is not None:
                active.task.cancel()
        for active in list(self._active.values()):
            await active.done.wait()

    async def _start(
        self, tenant: str, session: sessions_pb2.Session, *, single_step: bool, resumed: bool
    ) -> ActiveSession:
        lease = await self._store.acquire_lease(
            tenant, session.name, self.owner, self._lease.ttl_seconds
        )
        agents = await self._resolve_agents(tenant, session)
        tools = await self._tools_for(tenant) if self._tools_for is not None else None
        run = self._engine.open_run(
            tenant,
            session,
            agents,
            trace_id=current_trace_id(),
            last_seq=session.last_event_seq,
            tools=tools,
        )
        active = ActiveSession(tenant=tenant, run=run)
        key = (tenant, session.name)
        self._active[key] = active
        if self._metrics is not None:
            self._metrics.active_sessions.set(len(self._active))
        active.renewer = asyncio.create_task(self._renew(active))
        active.task = asyncio.create_task(
            self._engine.run(run, single_step=single_step, resumed=resumed or lease.took_over)
        )
        active.task.add_done_callback(lambda _: asyncio.create_task(self._finish(key, active)))
        return active

    async def _finish(self, key: tuple[str, str], active: ActiveSession) -> None:
        if active.renewer is not None:
            active.renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await active.renewer
        if not active.run.abandoned:
            with contextlib.suppress(Exception):
                await self._store.release_lease(active.tenant, key[1], self.owner)
        self._active.pop(key, None)
        if self._metrics is not None:
            self._metrics.active_sessions.set(len(self._active))
        active.done.set()

    async def _renew(self, active: ActiveSession) -> None:
        name = active.run.name
        while True:
            await asyncio.sleep(self._lease.renew_every)
            try:
                await self._store.renew_lease(
                    active.tenant, name, self.owner, self._lease.ttl_seconds
                )
            except Exception:
                _logger.warning("lost the lease of %s; stopping without ending it", name)
                active.run.abandoned = True
                if active.task is not None:
                    active.task.cancel()
                return

    async def _relay(
        self, active: ActiveSession, *, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Events of this run from the log, until the terminal event or the end of the step."""
        log = self._store.watch_events(active.tenant, active.run.name, after_seq)
        try:
            async for event in self._relay_from(active, log.__aiter__(), after_seq):
                yield event
        finally:
            aclose = getattr(log, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _relay_from(
        self,
        active: ActiveSession,
        log: AsyncIterator[events_pb2.SessionEvent],
        seen: int,
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        next_event: asyncio.Future[events_pb2.SessionEvent] = asyncio.ensure_future(log.__anext__())
        try:
            while True:
                waiter: asyncio.Future[object] = asyncio.ensure_future(active.done.wait())
                pending: set[asyncio.Future[object]] = {next_event, waiter}  # type: ignore[arg-type]
                finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if next_event not in finished:
                    break  # the run ended (a step, or an abandoned run)
                try:
                    event = next_event.result()
                except StopAsyncIteration:
                    return
                seen = event.seq
                yield event
                if event.WhichOneof("payload") in TERMINAL_EVENTS:
                    return
                next_event = asyncio.ensure_future(log.__anext__())
            # Deliver what the run stored before it ended, then stop.
            last = active.run.recorder.last_seq
            while seen < last:
                try:
                    event = await next_event
                except StopAsyncIteration:
                    return
                seen = event.seq
                yield event
                if event.WhichOneof("payload") in TERMINAL_EVENTS:
                    return
                if seen < last:
                    next_event = asyncio.ensure_future(log.__anext__())
        finally:
            if not next_event.done():
                next_event.cancel()
                with contextlib.suppress(BaseException):
                    await next_event


def _stamped(session: str, message: events_pb2.UserMessage) -> events_pb2.SessionEvent:
    event = events_pb2.SessionEvent(session=session, user_message=message)
    event.time.GetCurrentTime()
    return event
