"""Sessions running on this replica: leases, background runs, streams, messages, cancel.

A `Run`, `Step` or `Execute` call takes the session's lease in the memory service (another
replica holding an unexpired lease makes it FAILED_PRECONDITION), starts the engine as a
background task, and renews the lease every third of its time to live; every write of the run
names the lease owner, so a replica that lost the lease cannot write. The caller's stream is
fed by the run's writer as each commit is stored (so what a client sees has always been stored
first), and whatever others appended in between (a gap in the seq) is read back from the
memory service's log, so the caller sees every event once, in order. `StreamSession` on any
replica reads the same log (`WatchEvents`).

A replica whose lease renewal fails stops the run without a terminal event (the new owner goes
on). `resume_expired` lets a replica adopt RUNNING sessions whose lease expired (their owner
died): it re-reads them and runs them again with `resumed=True`; model calls already recorded
as complete are not repeated.

Admission (`admission.py`): a run takes a slot among the replica's running sessions before
anything is read or written, or is refused with RESOURCE_EXHAUSTED; a takeover takes a free
slot or leaves the session to another replica. Shutdown (`lifecycle.py`): `drain` refuses new
runs, stops the takeover loop and awaits it, stops each session at its next turn boundary
within a grace period, then abandons the rest; every task the manager starts is tracked and
awaited, so none is left pending once it is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from agentmesh.common.v1 import events_pb2, messages_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition, current_trace_id

from .admission import Admission, Slot
from .agents import SessionAgent
from .engine import Runtime, SessionEngine
from .lifecycle import ReplicaDraining, ReplicaState
from .observability import OrchestratorMetrics
from .preferences import SessionScope
from .tools import Tool

_logger = logging.getLogger(__name__)
T = TypeVar("T")

TERMINAL_EVENTS = frozenset({"session_completed", "session_failed", "session_cancelled"})
ACTIVE = (sessions_pb2.SESSION_STATUS_PENDING, sessions_pb2.SESSION_STATUS_RUNNING)

AgentResolver = Callable[[str, sessions_pb2.Session], Awaitable[list[SessionAgent]]]
ScopeLoader = Callable[[str, sessions_pb2.Session], Awaitable[SessionScope]]


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
    run: Runtime
    task: asyncio.Task[sessions_pb2.Session] | None = None
    renewer: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    slot: Slot | None = None
    lease_lost: bool = False


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
        scope_for: ScopeLoader | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._admission = admission or Admission()
        self.state = ReplicaState.RUNNING
        self._tasks: set[asyncio.Task[Any]] = set()
        self._takeover: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._scope_for = scope_for
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

    @property
    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks this manager started that have not ended (none once it is stopped)."""
        return [task for task in self._tasks if not task.done()]

    def is_running(self, tenant: str, session: str) -> bool:
        active = self._active.get((tenant, session))
        return active is not None and active.task is not None and not active.task.done()

    async def admit(self, time_remaining: float | None = None) -> Slot:
        """A place among this replica's running sessions, before any work for a run is done;
        `ResourceExhausted` (with a retry delay) when there is none, `ReplicaDraining` while
        the replica shuts down."""
        self._check_running()
        return await self._admission.sessions.acquire(time_remaining=time_remaining)

    async def run(
        self,
        tenant: str,
        session_name: str,
        *,
        single_step: bool = False,
        admitted: Slot | None = None,
        time_remaining: float | None = None,
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Run (or step) the session here and yield its events as they are stored.
        `admitted`: a slot the caller took with `admit` (one is taken here otherwise)."""
        slot = admitted or await self.admit(time_remaining)
        try:
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
            active = await self._start(
                tenant, session, single_step=single_step, resumed=False, slot=slot
            )
        except BaseException:
            slot.release()
            raise
        ended = False
        async for event in self._relay(active, after_seq=session.last_event_seq):
            ended = event.WhichOneof("payload") in TERMINAL_EVENTS
            yield event
        task = active.task
        if not ended and task is not None and task.done() and not task.cancelled():
            failure = task.exception()
            if failure is not None:
                raise failure  # mapped to a status by the interceptor; never a silent end
        if not ended and self.state is not ReplicaState.RUNNING:
            raise ReplicaDraining(f"this replica stopped running {session_name}; follow it")

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
        if reason == "client_disconnected" and self.state is not ReplicaState.RUNNING:
            return False  # the stream was closed by this replica's shutdown, not the client
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
            if self.state is not ReplicaState.RUNNING:
                break
            slot = self._admission.sessions.try_acquire()
            if slot is None:
                break  # full: leave the rest to a replica with room
            try:
                await self._start(tenant, session, single_step=False, resumed=True, slot=slot)
            except (FailedPrecondition, ReplicaDraining):
                slot.release()
                continue  # another replica was faster
            except BaseException:
                slot.release()
                raise
            resumed += 1
            self.takeovers += 1
            if self._metrics is not None:
                self._metrics.lease_takeovers.inc()
        return resumed

    def start_takeover(
        self,
        find: Callable[[], Awaitable[Sequence[tuple[str, sessions_pb2.Session]]]],
        interval_seconds: float,
    ) -> None:
        """Look for orphaned sessions every `interval_seconds` until the replica drains."""
        if self._takeover is None and self.state is ReplicaState.RUNNING:
            self._takeover = self._spawn(self.watch_for_orphans(find, interval_seconds))

    async def watch_for_orphans(
        self,
        find: Callable[[], Awaitable[Sequence[tuple[str, sessions_pb2.Session]]]],
        interval_seconds: float,
    ) -> None:
        """Forever: every `interval_seconds`, resume the sessions `find` reports orphaned."""
        while self.state is ReplicaState.RUNNING:
            await asyncio.sleep(interval_seconds)
            try:
                resumed = await self.resume_expired(await find())
            except Exception:
                _logger.exception("looking for orphaned sessions failed; trying again later")
                continue
            if resumed:
                _logger.info("resumed %d orphaned session(s)", resumed)

    async def shutdown(self, grace_seconds: float = 0.0) -> None:
        """`drain` (safe to call twice, and concurrently: every caller waits for the end)."""
        await self.drain(grace_seconds)

    async def drain(self, grace_seconds: float) -> None:
        """Stop every run here without ending the sessions, so another replica resumes them:
        refuse new runs, stop the takeover loop, let each session stop at its next turn
        boundary within `grace_seconds`, abandon the rest, and wait for every task."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._drain(grace_seconds))
        await asyncio.shield(self._stopped)

    async def _drain(self, grace_seconds: float) -> None:
        self.state = ReplicaState.DRAINING
        _logger.info("draining: %d session(s) running", len(self._active))
        if self._takeover is not None:
            self._takeover.cancel()
            await asyncio.gather(self._takeover, return_exceptions=True)
        for active in list(self._active.values()):
            active.run.turns.draining = True  # stop before the next turn starts
        waiting = [active.done.wait() for active in self._active.values()]
        if waiting:
            _, late = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waiting], timeout=grace_seconds
            )
            for waiter in late:
                waiter.cancel()
        for active in list(self._active.values()):  # still in a turn: abandon
            active.run.abandoned = True
            if active.task is not None:
                active.task.cancel()
        for active in list(self._active.values()):
            await active.done.wait()
        while self.pending_tasks:
            await asyncio.gather(*self.pending_tasks, return_exceptions=True)
        self.state = ReplicaState.STOPPED
        _logger.info("drained")

    def _check_running(self) -> None:
        if self.state is not ReplicaState.RUNNING:
            raise ReplicaDraining()

    def _spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start a task this manager tracks (and awaits when it stops)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _start(
        self,
        tenant: str,
        session: sessions_pb2.Session,
        *,
        single_step: bool,
        resumed: bool,
        slot: Slot,
    ) -> ActiveSession:
        # The lease, the agents and the tenant's tools side by side; nothing is written
        # before the lease is ours.
        tools_for, scope_for = self._tools_for, self._scope_for
        lease, agents, tools, scope = await asyncio.gather(
            self._store.acquire_lease(tenant, session.name, self.owner, self._lease.ttl_seconds),
            self._resolve_agents(tenant, session),
            tools_for(tenant) if tools_for is not None else _no_tools(),
            scope_for(tenant, session) if scope_for is not None else _no_scope(),
        )
        if self.state is not ReplicaState.RUNNING:  # draining began meanwhile: hand it back
            with contextlib.suppress(Exception):
                await self._store.release_lease(tenant, session.name, self.owner)
            raise ReplicaDraining()
        run = self._engine.open_run(
            tenant,
            session,
            agents,
            trace_id=current_trace_id(),
            last_seq=session.last_event_seq,
            tools=tools,
            lease_owner=self.owner,
            scope=scope,
        )
        active = ActiveSession(tenant=tenant, run=run, slot=slot)
        key = (tenant, session.name)
        self._active[key] = active
        if self._metrics is not None:
            self._metrics.active_sessions.set(len(self._active))
        active.renewer = self._spawn(self._renew(active))
        active.task = self._spawn(
            self._engine.run(run, single_step=single_step, resumed=resumed or lease.took_over)
        )
        active.task.add_done_callback(lambda _: self._ended(key, active))
        return active

    def _ended(self, key: tuple[str, str], active: ActiveSession) -> None:
        if active.slot is not None:
            active.slot.release()  # the session's work is over: its place is free at once
        self._spawn(self._finish(key, active))

    async def _finish(self, key: tuple[str, str], active: ActiveSession) -> None:
        if active.renewer is not None:
            active.renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await active.renewer
        recorder = active.run.recorder
        try:
            await (recorder.abandon() if active.run.abandoned else recorder.close())
        except Exception:
            _logger.warning("could not store the last writes of %s", key[1], exc_info=True)
        failure = recorder.failure
        if isinstance(failure, FailedPrecondition) and failure.reason == "LEASE_LOST":
            # A commit was refused: the lease ran out (the memory service was away longer than
            # its time to live). Releasing it would hide the session from every takeover.
            active.lease_lost = True
        if not active.lease_lost:  # a drained or abandoned run hands its lease on at once
            with contextlib.suppress(Exception):
                await self._store.release_lease(active.tenant, key[1], self.owner)
        self._active.pop(key, None)
        if self._metrics is not None:
            self._metrics.active_sessions.set(len(self._active))
        active.done.set()

    async def _renew(self, active: ActiveSession) -> None:
        """Renew the lease; stop the run only once it is lost: refused (another owner holds
        it), or not renewed for its whole time to live (a memory service that is down for a
        moment, being restarted, does not stop the run). After a failure it tries again
        three times as often, so the try that succeeds does not land at the lease's expiry."""
        name = active.run.name
        renewed = time.monotonic()
        wait = self._lease.renew_every
        while True:
            await asyncio.sleep(wait)
            try:
                await self._store.renew_lease(
                    active.tenant, name, self.owner, self._lease.ttl_seconds
                )
                renewed = time.monotonic()
                wait = self._lease.renew_every
            except Exception as error:
                transient = not isinstance(error, FailedPrecondition)
                if transient and time.monotonic() - renewed < self._lease.ttl_seconds:
                    _logger.warning("could not renew the lease of %s (%s); retrying", name, error)
                    wait = self._lease.renew_every / 3
                    continue
                _logger.warning("lost the lease of %s; stopping without ending it", name)
                active.lease_lost = True
                active.run.abandoned = True
                if active.task is not None:
                    active.task.cancel()
                return

    async def _relay(
        self, active: ActiveSession, *, after_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Events of this run as they are stored, until the terminal event or the run's end."""
        seen = after_seq
        async with contextlib.aclosing(active.run.recorder.subscribe()) as batches:
            async for batch in batches:
                first = batch.events[0].seq
                if first > seen + 1:  # others appended before this commit: read them back
                    async for event in self._replay(active, seen, first - 1):
                        seen = event.seq
                        yield event
                for event in batch.events:
                    if event.seq <= seen:
                        continue
                    seen = event.seq
                    yield event
                    if event.WhichOneof("payload") in TERMINAL_EVENTS:
                        return
        # The run ended (a step, or an abandoned run): deliver what was stored but not seen.
        async for event in self._replay(active, seen, active.run.recorder.last_seq):
            yield event
            if event.WhichOneof("payload") in TERMINAL_EVENTS:
                return

    async def _replay(
        self, active: ActiveSession, after_seq: int, last_seq: int
    ) -> AsyncIterator[events_pb2.SessionEvent]:
        """Stored events with `after_seq` < seq <= `last_seq`, from the memory service."""
        if last_seq <= after_seq:
            return
        log = self._store.watch_events(active.tenant, active.run.name, after_seq)
        try:
            async for event in log:
                if event.seq > last_seq:
                    return
                yield event
                if event.seq == last_seq:
                    return
        finally:
            aclose = getattr(log, "aclose", None)
            if aclose is not None:
                await aclose()


async def _no_tools() -> None:
    return None


async def _no_scope() -> None:
    return None


def _stamped(session: str, message: events_pb2.UserMessage) -> events_pb2.SessionEvent:
    event = events_pb2.SessionEvent(session=session, user_message=message)
    event.time.GetCurrentTime()
    return event
