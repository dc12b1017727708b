"""A workflow's event log: consecutive per-workflow seqs, appended inside other writes, watched.

Seq assignment is the session log's (``events.py``): bump ``workflows.last_event_seq`` by the
batch size with ``UPDATE ... RETURNING`` and insert the batch in the same transaction. The
workflow row lock serializes appenders, so seqs are consecutive and commit in seq order.

Watching reads the workflow's ``last_event_seq`` first and then its events up to that seq: all
of those are committed, so the reader neither skips nor repeats one, with or without a token
filter, whichever replica appended them. A watch ends when its workflow is deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_common import FieldViolation, InvalidArgument
from agentmesh_memory.db.notifier import EventNotifier
from agentmesh_memory.db.workflow_tables import workflow_events, workflows
from agentmesh_memory.names import invalid, invalid_many

from .base import StoreContext
from .workflow_common import (
    lock_workflow,
    parse_token_name,
    parse_workflow_name,
    workflow_not_found,
)

__all__ = ["MAX_EVENTS", "PendingEvents", "WorkflowEventStore", "check_events"]

MAX_EVENTS = 1000
MAX_EVENT_BYTES = 1024 * 1024
WATCH_PAGE = 1000
WATCH_RESPONSE_BYTES = 2 * 1024 * 1024
_DELETED = 1 << 62  # the "seq" a deletion announces: beyond any, so every watcher wakes


def check_events(
    batch: Sequence[workflow_pb2.WorkflowEvent],
    workflow: str,
    token: str = "",
    *,
    field_name: str = "events",
) -> list[FieldViolation]:
    """Violations of a batch of events for ``workflow`` (and ``token`` when given)."""
    found: list[FieldViolation] = []
    if len(batch) > MAX_EVENTS:
        return [FieldViolation(field_name, f"at most {MAX_EVENTS} per call")]
    for index, event in enumerate(batch):
        where = f"{field_name}[{index}]"
        if event.WhichOneof("payload") is None:
            found.append(FieldViolation(where, "has no payload"))
        if event.workflow and event.workflow != workflow:
            found.append(FieldViolation(f"{where}.workflow", f"must be empty or {workflow}"))
        if token and event.token and event.token != token:
            found.append(FieldViolation(f"{where}.token", f"must be empty or {token}"))
        if not token and event.token:
            try:
                owner, _ = parse_token_name(event.token, f"{where}.token")
            except InvalidArgument as error:
                found.extend(error.violations)
            else:
                if f"workflows/{owner}" != workflow:
                    found.append(FieldViolation(f"{where}.token", f"is not a token of {workflow}"))
        if event.ByteSize() > MAX_EVENT_BYTES:
            found.append(FieldViolation(where, f"at most {MAX_EVENT_BYTES} bytes"))
    return found


@dataclass
class PendingEvents:
    """Appends made by a transaction, announced to watchers once it committed."""

    notifier: EventNotifier
    appended: list[tuple[int, int]] = field(default_factory=list)

    def publish(self) -> None:
        for workflow_pk, last in self.appended:
            self.notifier.published(workflow_pk, last)


class WorkflowEventStore:
    def __init__(
        self, context: StoreContext, notifier: EventNotifier, *, poll_seconds: float = 2.0
    ) -> None:
        self._context = context
        self._db = context.db
        self._notifier = notifier
        self._poll_seconds = poll_seconds

    def pending(self) -> PendingEvents:
        return PendingEvents(self._notifier)

    async def append_in(
        self,
        conn: AsyncConnection,
        pending: PendingEvents,
        tenant: str,
        workflow_pk: int,
        workflow: str,
        batch: Sequence[workflow_pb2.WorkflowEvent],
        token: str = "",
    ) -> int:
        """Append ``batch`` (already checked) in the caller's transaction, which holds the
        workflow's lock; completes the events in place. Returns the last seq (0 for none)."""
        count = len(batch)
        if count == 0:
            return 0
        notification = self._notifier.notification(workflows.c.id, workflows.c.last_event_seq)
        bumped = (
            await conn.execute(
                sa.update(workflows)
                .where(workflows.c.id == workflow_pk)
                .values(last_event_seq=workflows.c.last_event_seq + count)
                .returning(workflows.c.last_event_seq, *notification)
            )
        ).one()
        last = int(bumped.last_event_seq)
        first = last - count + 1
        now = self._context.now()
        rows = []
        for offset, event in enumerate(batch):
            event.workflow = workflow
            if token:
                event.token = token
            event.seq = first + offset
            if not event.HasField("time"):
                event.time.FromDatetime(now)
            rows.append(
                {
                    "workflow_pk": workflow_pk,
                    "seq": first + offset,
                    "tenant_id": tenant,
                    "token_id": event.token.rpartition("/")[2] if event.token else "",
                    "type": event.WhichOneof("payload") or "",
                    "payload": event.SerializeToString(),
                    "create_time": now,
                }
            )
        await conn.execute(sa.insert(workflow_events), rows)
        pending.appended.append((workflow_pk, last))
        return last

    async def announce_deletion(self, conn: AsyncConnection, workflow_pk: int) -> None:
        """In the deleting transaction: wake the watchers on other replicas (they end)."""
        notification = self._notifier.notification(
            sa.literal(workflow_pk, sa.BigInteger), sa.literal(_DELETED, sa.BigInteger)
        )
        if notification:
            await conn.execute(sa.select(*notification))

    def deleted(self, workflow_pk: int) -> None:
        """After the deleting transaction: wake this replica's watchers (they end)."""
        self._notifier.published(workflow_pk, _DELETED)

    async def append(
        self, tenant: str, request: wpb.AppendWorkflowEventsRequest
    ) -> wpb.AppendWorkflowEventsResponse:
        workflow_id = parse_workflow_name(request.workflow, "workflow")
        workflow = f"workflows/{workflow_id}"
        if not request.events:
            raise invalid("events", "must not be empty")
        found = check_events(request.events, workflow)
        if found:
            raise invalid_many(found)
        events = list(request.events)
        pending = self.pending()

        async def append(conn: AsyncConnection) -> wpb.AppendWorkflowEventsResponse:
            locked = await lock_workflow(conn, self._db, tenant, workflow_id)
            last = await self.append_in(conn, pending, tenant, locked.pk, workflow, events)
            return wpb.AppendWorkflowEventsResponse(first_seq=last - len(events) + 1, last_seq=last)

        # With a request_id, at most once (the request log, claimed in the same transaction).
        response = await self._context.idempotent(
            tenant,
            "AppendWorkflowEvents",
            request.request_id,
            request,
            wpb.AppendWorkflowEventsResponse,
            append,
        )
        pending.publish()
        return response

    async def _lookup(self, tenant: str, workflow_id: str) -> int | None:
        async with self._db.read("WatchWorkflowEvents.lookup") as conn:
            pk = (
                await conn.execute(
                    sa.select(workflows.c.id).where(
                        workflows.c.tenant_id == tenant, workflows.c.workflow_id == workflow_id
                    )
                )
            ).scalar()
        return None if pk is None else int(pk)

    async def _read_after(
        self, workflow_pk: int, delivered: int, token_id: str
    ) -> tuple[list[Any], int | None]:
        """Committed events after ``delivered`` (of one token when given), and the seq read
        up to; None once the workflow is gone."""
        async with self._db.read("WatchWorkflowEvents.read") as conn:
            last = (
                await conn.execute(
                    sa.select(workflows.c.last_event_seq).where(workflows.c.id == workflow_pk)
                )
            ).scalar()
            if last is None:
                return [], None
            if int(last) <= delivered:
                return [], int(last)
            query = (
                sa.select(workflow_events.c.seq, workflow_events.c.payload)
                .where(
                    workflow_events.c.workflow_pk == workflow_pk,
                    workflow_events.c.seq > delivered,
                    workflow_events.c.seq <= int(last),
                )
                .order_by(workflow_events.c.seq)
                .limit(WATCH_PAGE)
            )
            if token_id:
                query = query.where(workflow_events.c.token_id == token_id)
            batch = list((await conn.execute(query)).all())
        # A full page was read only up to its last seq; otherwise everything up to `last`.
        scanned = int(batch[-1].seq) if len(batch) == WATCH_PAGE else int(last)
        return batch, scanned

    async def watch(
        self, tenant: str, request: wpb.WatchWorkflowEventsRequest
    ) -> AsyncGenerator[wpb.WatchWorkflowEventsResponse, None]:
        """Replay events after ``after_seq``, then tail; ends when the workflow is deleted."""
        workflow_id = parse_workflow_name(request.workflow, "workflow")
        token_id = ""
        if request.token:
            owner, token_id = parse_token_name(request.token, "token")
            if owner != workflow_id:
                raise invalid("token", f"is not a token of {request.workflow}")
        if request.after_seq < 0:
            raise invalid("after_seq", "must not be negative")
        workflow_pk = await asyncio.shield(asyncio.ensure_future(self._lookup(tenant, workflow_id)))
        if workflow_pk is None:
            raise workflow_not_found(workflow_id)
        # `scanned`: every event up to it was delivered or filtered out.
        scanned = request.after_seq
        with self._notifier.subscribe(workflow_pk) as subscription:
            while True:
                # Shielded: a cancelled watch never abandons a query half-way.
                batch, read_to = await asyncio.shield(
                    asyncio.ensure_future(self._read_after(workflow_pk, scanned, token_id))
                )
                if read_to is None:
                    return  # the workflow was deleted
                response = wpb.WatchWorkflowEventsResponse()
                size = 0
                for row in batch:
                    if size and size + len(row.payload) > WATCH_RESPONSE_BYTES:
                        yield response
                        response = wpb.WatchWorkflowEventsResponse()
                        size = 0
                    response.events.add().MergeFromString(row.payload)
                    size += len(row.payload)
                if response.events:
                    yield response
                scanned = max(scanned, read_to)
                if len(batch) < WATCH_PAGE:
                    await subscription.wait_beyond(scanned, self._poll_seconds)
