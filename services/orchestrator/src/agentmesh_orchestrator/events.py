"""The one path a running session's writes take: queued in order, committed as steps.

`EventRecorder` is the session's only writer while it runs on this replica. Everything the
engine records (events, conversation messages, usage-ledger rows, changes to the session,
pending approvals)
is queued in the order it happens and stored by one background writer through
`SessionStore.commit_step`: each commit takes everything queued so far, in one transaction,
so a whole agent turn (its `message_started`, text, ledger row, `message_completed` and
message) is usually one write, and nothing is ever half-stored.

When a write starts:

- `emit` (an event clients should see now, such as `message_completed` or a tool call)
  wakes the writer at once;
- text deltas, `buffer`ed events (`message_started`) and staged side writes wait at most
  `flush_interval` (50 ms), so streamed text reaches clients in small batches;
- while a commit is in flight, whatever is queued meanwhile goes in the next one (group
  commit), so the engine never waits for the store to go on with the session. `flush` waits
  until everything queued so far is stored; the engine flushes where it must (a run's end).

Events become visible only once stored: after each commit the stored events, with their
seq, go to `subscribe`rs (the `Run` and `Step` streams of this replica). A seq gap before a
commit's first event means another writer (a `SendMessage` through another replica) appended
in between; subscribers are told, and `foreign_writes` is set so the engine re-reads the
conversation.

A commit that fails (the store is down, or the lease is lost) fails every later `emit`,
`buffer`, `delta` or `flush` with the same error; nothing queued after it is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2

from agentmesh.common.v1 import approvals_pb2, events_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2

from .ports import SessionStore, StepWrite


@dataclass
class _PendingDelta:
    agent: str
    message_id: str
    task_id: str
    thinking: bool
    time: timestamp_pb2.Timestamp
    parts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StoredBatch:
    """Events of one commit, with their seq; `gap` when others appended right before."""

    events: tuple[events_pb2.SessionEvent, ...]
    gap: bool = False


class EventRecorder:
    """Stores one session's writes in order, a commit at a time, and publishes its events."""

    def __init__(
        self,
        store: SessionStore,
        *,
        tenant: str,
        session: str,
        trace_id: str = "",
        flush_interval: float = 0.05,
        lease_owner: str = "",
    ) -> None:
        self._store = store
        self._tenant = tenant
        self._session = session
        self.trace_id = trace_id
        self._flush_interval = flush_interval
        self._lease_owner = lease_owner
        self._pending: list[events_pb2.SessionEvent | _PendingDelta] = []
        self._messages: list[memory_pb2.StoredMessage] = []
        self._executions: list[memory_pb2.Execution] = []
        self._approvals: list[approvals_pb2.Approval] = []
        self._update: sessions_pb2.Session | None = None
        self._update_fields: set[str] = set()
        self._unstored_messages = 0  # staged or in flight
        self._unstored_status = False  # a status change staged or in flight
        self._queued = 0  # writes queued so far
        self._stored = 0  # of which stored
        self._progress = asyncio.Condition()
        self._wake = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._subscribers: list[asyncio.Queue[StoredBatch | None]] = []
        self.last_seq = 0
        self.foreign_writes = False

    # -- queueing ------------------------------------------------------------------------

    async def emit(self, event: events_pb2.SessionEvent) -> None:
        """Queue `event` (after everything queued before it) and start storing it now."""
        self._enqueue(self._stamp(event))
        self._wake_now()

    def buffer(self, event: events_pb2.SessionEvent) -> None:
        """Queue `event`; it is stored with the next write, within `flush_interval`."""
        self._enqueue(self._stamp(event))
        self._wake_later()

    async def delta(
        self, *, agent: str, message_id: str, text: str, thinking: bool = False, task_id: str = ""
    ) -> None:
        """Queue streamed text; consecutive text of one message is merged into one event."""
        if not text:
            return
        self._check()
        last = self._pending[-1] if self._pending else None
        if (
            isinstance(last, _PendingDelta)
            and last.message_id == message_id
            and last.thinking == thinking
            and last.agent == agent
        ):
            last.parts.append(text)
        else:
            now = timestamp_pb2.Timestamp()
            now.GetCurrentTime()
            self._pending.append(_PendingDelta(agent, message_id, task_id, thinking, now, [text]))
            self._queued += 1
        self._wake_later()

    def stage_messages(self, messages: Sequence[memory_pb2.StoredMessage]) -> None:
        """Queue messages for the conversation; stored with the next write."""
        self._check()
        self._messages.extend(messages)
        self._unstored_messages += len(messages)
        self._queued += 1
        self._wake_later()

    def stage_execution(self, execution: memory_pb2.Execution) -> None:
        """Queue a usage-ledger row; stored with the next write."""
        self._check()
        self._executions.append(execution)
        self._queued += 1
        self._wake_later()

    def stage_approval(self, approval: approvals_pb2.Approval) -> None:
        """Queue a pending approval; stored with the next write, before its events."""
        self._check()
        self._approvals.append(approval)
        self._queued += 1
        self._wake_later()

    def stage_update(self, session: sessions_pb2.Session, fields: Sequence[str]) -> None:
        """Queue a change to the session: the named fields, as they are when it is written.

        Changes queued together are merged (the latest values win). The memory service checks
        each status transition, so before changing the status again the engine waits for
        `settle_status` (in practice only a session that ends before its start is stored).
        """
        self._check()
        self._update = session
        self._update_fields.update(fields)
        if "status" in fields:
            self._unstored_status = True
        self._queued += 1
        self._wake_later()

    async def settle_status(self) -> None:
        """Wait until a queued status change is stored (at once when there is none)."""
        if self._unstored_status:
            await self.flush()

    async def flush(self) -> None:
        """Wait until everything queued so far is stored (raise the failure if one was)."""
        target = self._queued
        if self._stored >= target:
            self._check()
            return
        self._wake_now()
        async with self._progress:
            await self._progress.wait_for(lambda: self._stored >= target or bool(self._failure))
        self._check()

    async def close(self) -> None:
        """Store what is queued, then stop the writer and end the subscriptions."""
        try:
            if self._failure is None:
                await self.flush()
        finally:
            await self.abandon()

    async def abandon(self) -> None:
        """Stop at once: drop what is queued (a commit in flight is let finish)."""
        if self._timer is not None:
            self._timer.cancel()
        self._pending.clear()
        self._messages.clear()
        self._executions.clear()
        self._approvals.clear()
        self._update_fields.clear()
        writer, self._writer = self._writer, None
        if writer is not None:
            self._failure = self._failure or _Stopped()
            self._wake.set()
            with contextlib.suppress(BaseException):
                await asyncio.shield(writer)
        for queue in self._subscribers:
            queue.put_nowait(None)
        self._subscribers.clear()

    @property
    def messages_unstored(self) -> bool:
        """True while a staged message is not stored yet (a read would miss it)."""
        return self._unstored_messages > 0

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the writer, if one did."""
        return self._failure

    # -- reading -------------------------------------------------------------------------

    def subscribe(self) -> AsyncGenerator[StoredBatch, None]:
        """Batches of events as they are stored from now on, until the recorder closes."""
        queue: asyncio.Queue[StoredBatch | None] = asyncio.Queue()
        self._subscribers.append(queue)

        async def batches() -> AsyncGenerator[StoredBatch, None]:
            try:
                while (batch := await queue.get()) is not None:
                    yield batch
            finally:
                if queue in self._subscribers:
                    self._subscribers.remove(queue)

        return batches()

    # -- the writer ----------------------------------------------------------------------

    def _enqueue(self, event: events_pb2.SessionEvent) -> None:
        self._check()
        self._pending.append(event)
        self._queued += 1

    def _wake_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._ensure_writer()
        self._wake.set()

    def _wake_later(self) -> None:
        self._ensure_writer()
        if self._timer is None and not self._wake.is_set():
            self._timer = asyncio.get_running_loop().call_later(
                self._flush_interval, self._wake.set
            )

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_forever())

    async def _write_forever(self) -> None:
        while self._failure is None:
            await self._wake.wait()
            # Commit while woken: by `emit`, `flush`, or the timer of the oldest queued write.
            # What is queued during a commit without such a wake-up waits for its timer.
            while self._wake.is_set() and self._failure is None:
                self._wake.clear()
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if self._stored < self._queued:
                    await self._commit()

    async def _commit(self) -> None:
        target = self._queued
        step = self._take()
        try:
            stored = await self._store.commit_step(
                self._tenant, self._session, step, lease_owner=self._lease_owner
            )
        except BaseException as exc:
            self._failure = exc  # raised to the engine by its next call
        else:
            self._publish(step.events, stored.first_seq, stored.last_seq)
            self._unstored_messages -= len(step.messages)
            if "status" in step.update_fields and "status" not in self._update_fields:
                self._unstored_status = False
            self._stored = target
        async with self._progress:
            self._progress.notify_all()

    def _take(self) -> StepWrite:
        events = [
            item if isinstance(item, events_pb2.SessionEvent) else self._delta_event(item)
            for item in self._pending
        ]
        self._pending.clear()
        update: sessions_pb2.Session | None = None
        fields: tuple[str, ...] = ()
        if self._update is not None and self._update_fields:
            update = sessions_pb2.Session()
            update.CopyFrom(self._update)
            fields = tuple(sorted(self._update_fields))
        self._update_fields.clear()
        step = StepWrite(
            events=events,
            messages=tuple(self._messages),
            executions=tuple(self._executions),
            update=update,
            update_fields=fields,
            approvals=tuple(self._approvals),
        )
        self._messages.clear()
        self._executions.clear()
        self._approvals.clear()
        return step

    def _publish(
        self, events: Sequence[events_pb2.SessionEvent], first_seq: int, last_seq: int
    ) -> None:
        if not events:
            return
        gap = first_seq != self.last_seq + 1
        if gap:
            self.foreign_writes = True
        for offset, event in enumerate(events):
            event.seq = first_seq + offset
        self.last_seq = last_seq
        batch = StoredBatch(tuple(events), gap=gap)
        for queue in self._subscribers:
            queue.put_nowait(batch)

    def _delta_event(self, pending: _PendingDelta) -> events_pb2.SessionEvent:
        event = events_pb2.SessionEvent(
            session=self._session,
            agent=pending.agent,
            message_id=pending.message_id,
            task_id=pending.task_id,
            trace_id=self.trace_id,
            time=pending.time,
        )
        text = "".join(pending.parts)
        if pending.thinking:
            event.thinking.text = text
        else:
            event.content_delta.text = text
        return event

    def _stamp(self, event: events_pb2.SessionEvent) -> events_pb2.SessionEvent:
        event.session = self._session
        if not event.trace_id:
            event.trace_id = self.trace_id
        if not event.HasField("time"):
            event.time.GetCurrentTime()
        return event

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure


class _Stopped(Exception):
    """The recorder was abandoned: nothing more is written."""

    def __init__(self) -> None:
        super().__init__("the session's writer was stopped")
