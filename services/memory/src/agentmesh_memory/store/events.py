"""The replayable event log of a session: atomic appends with gapless seqs, and watching.

Seq assignment: an append bumps ``sessions.last_event_seq`` by the batch size with one
``UPDATE ... RETURNING`` and inserts the batch, in one transaction. On PostgreSQL the row lock
taken by that UPDATE serializes concurrent appenders of a session, so seqs are gapless and
commits happen in seq order: a reader never sees seq N+1 without seq N. On SQLite writers are
serialized by the database handle.

Watching: subscribe to wake-ups first, then read ``seq > last delivered`` from the database
until caught up, then wait for a wake-up (or the poll interval) and read again. Every event
is read from the database by seq, so the switch from replay to live tail can neither skip nor
repeat one, whichever replica appended it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import events_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition, FieldViolation
from agentmesh_memory.db.notifier import EventNotifier
from agentmesh_memory.db.tables import events, sessions
from agentmesh_memory.names import invalid, invalid_many, parse_session_name

from .base import StoreContext, Write
from .session_locks import not_found

__all__ = ["TERMINAL_EVENTS", "EventStore"]

TERMINAL_EVENTS = frozenset({"session_completed", "session_failed", "session_cancelled"})
MAX_BATCH = 1000
MAX_EVENT_BYTES = 1024 * 1024
WATCH_PAGE = 1000
WATCH_RESPONSE_BYTES = 2 * 1024 * 1024


class EventStore:
    def __init__(
        self, context: StoreContext, notifier: EventNotifier, *, poll_seconds: float = 2.0
    ) -> None:
        self._context = context
        self._db = context.db
        self._notifier = notifier
        self._poll_seconds = poll_seconds

    async def append(
        self, tenant: str, request: memory_pb2.AppendEventsRequest
    ) -> memory_pb2.AppendEventsResponse:
        session_id = parse_session_name(request.session, "session")
        write = self.prepare_append(tenant, session_id, request.events)
        response = await self._context.idempotent(
            tenant,
            "AppendEvents",
            request.request_id,
            request,
            memory_pb2.AppendEventsResponse,
            write.run,
        )
        write.after_commit()
        return response

    def prepare_append(
        self, tenant: str, session_id: str, batch: Sequence[events_pb2.SessionEvent]
    ) -> Write[memory_pb2.AppendEventsResponse]:
        """Validate a batch for the session; the write appends it and completes its events.

        Violations name ``events[i]``, the field of both requests that carry events. The
        write completes the given events in place (session, seq, time).
        """
        name = f"sessions/{session_id}"
        count = len(batch)
        if count == 0:
            raise invalid("events", "must not be empty")
        if count > MAX_BATCH:
            raise invalid("events", f"at most {MAX_BATCH} per call")
        found: list[FieldViolation] = []
        kinds: list[str] = []
        for index, event in enumerate(batch):
            kind = event.WhichOneof("payload")
            if kind is None:
                found.append(FieldViolation(f"events[{index}]", "has no payload"))
            kinds.append(kind or "")
            if event.session and event.session != name:
                found.append(FieldViolation(f"events[{index}].session", f"must be empty or {name}"))
            if event.ByteSize() > MAX_EVENT_BYTES:
                found.append(FieldViolation(f"events[{index}]", f"at most {MAX_EVENT_BYTES} bytes"))
        terminal_at = [i for i, kind in enumerate(kinds) if kind in TERMINAL_EVENTS]
        if terminal_at and (len(terminal_at) > 1 or terminal_at[0] != count - 1):
            found.append(FieldViolation("events", "a terminal event can only be the last one"))
        if found:
            raise invalid_many(found)
        is_terminal = bool(terminal_at)
        appended: list[tuple[int, int]] = []

        # On PostgreSQL the NOTIFY rides on the UPDATE (one round trip less per append).
        notification = self._notifier.notification(sessions.c.id, sessions.c.last_event_seq)

        async def append(conn: AsyncConnection) -> memory_pb2.AppendEventsResponse:
            bumped = (
                await conn.execute(
                    sa.update(sessions)
                    .where(
                        sessions.c.tenant_id == tenant,
                        sessions.c.session_id == session_id,
                        sessions.c.terminal_seq.is_(None),
                    )
                    .values(
                        last_event_seq=sessions.c.last_event_seq + count,
                        terminal_seq=(sessions.c.last_event_seq + count)
                        if is_terminal
                        else sessions.c.terminal_seq,
                    )
                    .returning(sessions.c.id, sessions.c.last_event_seq, *notification)
                )
            ).first()
            if bumped is None:
                ended = (
                    await conn.execute(
                        sa.select(sessions.c.terminal_seq).where(
                            sessions.c.tenant_id == tenant, sessions.c.session_id == session_id
                        )
                    )
                ).first()
                if ended is None:
                    raise not_found(session_id)
                raise FailedPrecondition(
                    f"session {name!r} already ended with its terminal event "
                    f"(seq {ended.terminal_seq})",
                    reason="SESSION_ENDED",
                    metadata={"session": name, "terminal_seq": str(ended.terminal_seq)},
                )
            session_pk, last = int(bumped.id), int(bumped.last_event_seq)
            first = last - count + 1
            now = self._context.now()
            rows = []
            for offset, (stored, kind) in enumerate(zip(batch, kinds, strict=True)):
                # The request's own messages are completed in place (they are ours).
                stored.session = name
                stored.seq = first + offset
                if not stored.HasField("time"):
                    stored.time.FromDatetime(now)
                rows.append(
                    {
                        "session_pk": session_pk,
                        "seq": first + offset,
                        "tenant_id": tenant,
                        "type": kind,
                        "payload": stored.SerializeToString(),
                        "create_time": now,
                    }
                )
            await conn.execute(sa.insert(events), rows)
            appended.append((session_pk, last))
            return memory_pb2.AppendEventsResponse(first_seq=first, last_seq=last)

        def publish() -> None:
            for session_pk, last in appended:
                self._notifier.published(session_pk, last)

        return Write(append, publish)

    async def _lookup(self, tenant: str, session_id: str) -> Any:
        async with self._db.read("WatchEvents.lookup") as conn:
            return (
                await conn.execute(
                    sa.select(sessions.c.id, sessions.c.terminal_seq).where(
                        sessions.c.tenant_id == tenant, sessions.c.session_id == session_id
                    )
                )
            ).first()

    async def _read_after(self, session_pk: int, delivered: int) -> tuple[list[Any], int | None]:
        """The next events after ``delivered``, or none and the terminal seq (if any)."""
        async with self._db.read("WatchEvents.read") as conn:
            batch = list(
                (
                    await conn.execute(
                        sa.select(events.c.seq, events.c.type, events.c.payload)
                        .where(events.c.session_pk == session_pk, events.c.seq > delivered)
                        .order_by(events.c.seq)
                        .limit(WATCH_PAGE)
                    )
                ).all()
            )
            if batch:
                return batch, None
            terminal_seq = (
                await conn.execute(
                    sa.select(sessions.c.terminal_seq).where(sessions.c.id == session_pk)
                )
            ).scalar()
            return batch, terminal_seq

    async def watch(
        self, tenant: str, request: memory_pb2.WatchEventsRequest
    ) -> AsyncGenerator[memory_pb2.WatchEventsResponse, None]:
        """Replay events after ``after_seq``, then tail; ends after the terminal event."""
        session_id = parse_session_name(request.session, "session")
        if request.after_seq < 0:
            raise invalid("after_seq", "must not be negative")
        row = await asyncio.shield(asyncio.ensure_future(self._lookup(tenant, session_id)))
        if row is None:
            raise not_found(session_id)
        session_pk = int(row.id)
        delivered = request.after_seq
        with self._notifier.subscribe(session_pk) as subscription:
            while True:
                # Shielded: a cancelled watch never abandons a query half-way.
                batch, terminal_seq = await asyncio.shield(
                    asyncio.ensure_future(self._read_after(session_pk, delivered))
                )
                if not batch:
                    if terminal_seq is not None and delivered >= terminal_seq:
                        return
                    await subscription.wait_beyond(delivered, self._poll_seconds)
                    continue
                response = memory_pb2.WatchEventsResponse()
                size = 0
                ended = False
                for seq, kind, payload in batch:
                    if seq != delivered + 1:
                        # Cannot happen with the append protocol above; never deliver past a hole.
                        break
                    if size and size + len(payload) > WATCH_RESPONSE_BYTES:
                        yield response
                        response = memory_pb2.WatchEventsResponse()
                        size = 0
                    response.events.add().MergeFromString(payload)
                    size += len(payload)
                    delivered = seq
                    if kind in TERMINAL_EVENTS:
                        ended = True
                        break
                if response.events:
                    yield response
                elif not ended:
                    await asyncio.sleep(0.005)
                if ended:
                    return
