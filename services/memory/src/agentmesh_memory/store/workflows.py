"""Workflow records: ``workflows/{workflow_id}``, definitions stored as the caller validated them.

The orchestrator checks places, transitions and rules; this store keeps the definition
opaque except for its place ids, which it needs to refuse a token in a place the workflow
does not have and an update that would strand tokens (WORKFLOW_PLACES_IN_USE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_common import FailedPrecondition, FieldViolation
from agentmesh_memory.db.workflow_tables import due_work, workflow_tokens, workflows
from agentmesh_memory.names import PageToken, check_request_id, invalid, invalid_many, page_size

from .base import StoreContext, check_size, insert_ignore, parse_stored, set_time
from .due_work import check_items, due_rows
from .workflow_common import (
    RevisionMismatch,
    WorkflowExists,
    check_place,
    generated_id,
    lock_workflow,
    parse_resource_id,
    parse_workflow_name,
    token_name,
    workflow_name,
    workflow_not_found,
)
from .workflow_events import WorkflowEventStore

__all__ = ["WorkflowRecordStore"]

MAX_WORKFLOW_BYTES = 1024 * 1024
MAX_PLACES = 1000
# Kept in columns (or computed), not in the stored document.
COLUMN_FIELDS = ("name", "revision", "create_time", "update_time", "last_event_seq", "token_counts")


def _document(workflow: workflow_pb2.Workflow) -> tuple[bytes, list[str]]:
    """The stored form of a definition and its place ids; INVALID_ARGUMENT for bad places."""
    stored = workflow_pb2.Workflow()
    stored.CopyFrom(workflow)
    for name in COLUMN_FIELDS:
        stored.ClearField(name)  # type: ignore[arg-type]
    check_size(stored, MAX_WORKFLOW_BYTES, "workflow")
    if len(stored.places) > MAX_PLACES:
        raise invalid("workflow.places", f"at most {MAX_PLACES}")
    places: list[str] = []
    for index, place in enumerate(stored.places):
        field = f"workflow.places[{index}].id"
        check_place(place.id, field)
        if place.id in places:
            raise invalid(field, f"place {place.id!r} is listed twice")
        places.append(place.id)
    return stored.SerializeToString(), places


def _check_arrivals(arrivals: Sequence[wpb.PlaceArrival], places: list[str]) -> None:
    faults = check_items(
        [arrival.work for arrival in arrivals], "arrivals", kinds=frozenset({"place_agent"})
    )
    for index, arrival in enumerate(arrivals):
        if arrival.place not in places:
            faults.append(
                FieldViolation(f"arrivals[{index}].place", f"{arrival.place!r} is not a place")
            )
    if faults:
        raise invalid_many(faults)


async def _schedule_arrivals(
    conn: AsyncConnection,
    tenant: str,
    workflow_pk: int,
    workflow_id: str,
    arrivals: Sequence[wpb.PlaceArrival],
) -> None:
    """One item per token sitting in each arrival's place, named for it and its stay."""
    for arrival in arrivals:
        tokens = await conn.execute(
            sa.select(workflow_tokens.c.id, workflow_tokens.c.token_id, workflow_tokens.c.revision)
            .where(
                workflow_tokens.c.workflow_pk == workflow_pk,
                workflow_tokens.c.place == arrival.place,
            )
            .order_by(workflow_tokens.c.id)
        )
        rows = []
        for token in tokens:
            item = wpb.DueWork()
            item.CopyFrom(arrival.work)
            item.place_agent.stay_revision = int(token.revision)
            name = token_name(workflow_id, str(token.token_id))
            rows += due_rows(tenant, [item], token=name, token_pk=int(token.id))
        if rows:
            await conn.execute(sa.insert(due_work), rows)


def to_proto(row: Any) -> workflow_pb2.Workflow:
    workflow = parse_stored(workflow_pb2.Workflow, row.document)
    workflow.name = workflow_name(row.workflow_id)
    workflow.revision = int(row.revision)
    workflow.last_event_seq = int(row.last_event_seq)
    set_time(workflow.create_time, row.create_time)
    set_time(workflow.update_time, row.update_time)
    return workflow


class WorkflowRecordStore:
    def __init__(self, context: StoreContext, events: WorkflowEventStore) -> None:
        self._context = context
        self._db = context.db
        self._events = events

    async def create(
        self, tenant: str, request: wpb.CreateWorkflowRecordRequest
    ) -> wpb.CreateWorkflowRecordResponse:
        workflow_id = (
            parse_resource_id(request.workflow_id, "workflow_id", "workflow id")
            if request.workflow_id
            else generated_id("wf")
        )
        document, places = _document(request.workflow)
        request_id = check_request_id(request.request_id) or None
        now = self._context.now()
        async with self._db.write("CreateWorkflowRecord") as conn:
            inserted = (
                await conn.execute(
                    insert_ignore(self._db, workflows)
                    .values(
                        tenant_id=tenant,
                        workflow_id=workflow_id,
                        document=document,
                        places=places,
                        revision=1,
                        create_time=now,
                        update_time=now,
                        request_id=request_id,
                    )
                    .returning(*workflows.c)
                )
            ).first()
            if inserted is None:
                inserted = await self._existing(conn, tenant, workflow_id, request_id)
        return wpb.CreateWorkflowRecordResponse(workflow=to_proto(inserted))

    async def _existing(
        self, conn: AsyncConnection, tenant: str, workflow_id: str, request_id: str | None
    ) -> Any:
        """The first creation of a repeated request; ALREADY_EXISTS for a taken id."""
        if request_id is not None:
            row = (
                await conn.execute(
                    sa.select(workflows).where(
                        workflows.c.tenant_id == tenant, workflows.c.request_id == request_id
                    )
                )
            ).first()
            if row is not None:
                return row
        name = workflow_name(workflow_id)
        raise WorkflowExists(f"workflow {name!r} already exists", metadata={"workflow": name})

    async def get(
        self, tenant: str, request: wpb.GetWorkflowRecordRequest
    ) -> wpb.GetWorkflowRecordResponse:
        workflow_id = parse_workflow_name(request.name)
        async with self._db.read("GetWorkflowRecord") as conn:
            row = (
                await conn.execute(
                    sa.select(workflows).where(
                        workflows.c.tenant_id == tenant, workflows.c.workflow_id == workflow_id
                    )
                )
            ).first()
            if row is None:
                raise workflow_not_found(workflow_id)
            workflow = to_proto(row)
            if request.with_token_counts:
                counts = await conn.execute(
                    sa.select(workflow_tokens.c.place, sa.func.count())
                    .where(workflow_tokens.c.workflow_pk == row.id)
                    .group_by(workflow_tokens.c.place)
                )
                for place, count in counts:
                    workflow.token_counts[place] = int(count)
        return wpb.GetWorkflowRecordResponse(workflow=workflow)

    async def list(
        self, tenant: str, request: wpb.ListWorkflowRecordsRequest
    ) -> wpb.ListWorkflowRecordsResponse:
        size = page_size(request.page_size)
        query_key = ("workflows",)
        token = PageToken.decode(request.page_token, query_key)
        query = sa.select(workflows).where(workflows.c.tenant_id == tenant)
        if token is not None:
            if not isinstance(token.after, str):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(workflows.c.workflow_id > token.after)
        async with self._db.read("ListWorkflowRecords") as conn:
            rows = (
                await conn.execute(query.order_by(workflows.c.workflow_id).limit(size + 1))
            ).all()
        response = wpb.ListWorkflowRecordsResponse(workflows=[to_proto(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = PageToken(str(rows[size - 1].workflow_id)).encode(query_key)
        return response

    async def update(
        self, tenant: str, request: wpb.UpdateWorkflowRecordRequest
    ) -> wpb.UpdateWorkflowRecordResponse:
        workflow_id = parse_workflow_name(request.workflow.name, "workflow.name")
        if request.expected_revision < 0:
            raise invalid("expected_revision", "must not be negative")
        document, places = _document(request.workflow)
        _check_arrivals(request.arrivals, places)
        async with self._db.write("UpdateWorkflowRecord") as conn:
            locked = await lock_workflow(conn, self._db, tenant, workflow_id)
            if request.expected_revision and request.expected_revision != locked.revision:
                raise RevisionMismatch(
                    f"{locked.name} is at revision {locked.revision}, "
                    f"not {request.expected_revision}",
                    metadata={"workflow": locked.name, "revision": str(locked.revision)},
                )
            stranded = sorted(
                str(place)
                for place in (
                    await conn.execute(
                        sa.select(workflow_tokens.c.place)
                        .where(
                            workflow_tokens.c.workflow_pk == locked.pk,
                            workflow_tokens.c.place.not_in(places),
                        )
                        .distinct()
                    )
                ).scalars()
            )
            if stranded:
                raise FailedPrecondition(
                    f"tokens sit in places the new definition of {locked.name} lacks: "
                    f"{', '.join(stranded[:20])}; move or delete them first",
                    reason="WORKFLOW_PLACES_IN_USE",
                    metadata={"workflow": locked.name, "places": ",".join(stranded[:20])},
                )
            row = (
                await conn.execute(
                    sa.update(workflows)
                    .where(workflows.c.id == locked.pk)
                    .values(
                        document=document,
                        places=places,
                        revision=workflows.c.revision + 1,
                        update_time=self._context.now(),
                    )
                    .returning(*workflows.c)
                )
            ).one()
            await _schedule_arrivals(conn, tenant, locked.pk, workflow_id, request.arrivals)
        return wpb.UpdateWorkflowRecordResponse(workflow=to_proto(row))

    async def delete(
        self, tenant: str, request: wpb.DeleteWorkflowRecordRequest
    ) -> wpb.DeleteWorkflowRecordResponse:
        workflow_id = parse_workflow_name(request.name)
        async with self._db.write("DeleteWorkflowRecord") as conn:
            locked = await lock_workflow(conn, self._db, tenant, workflow_id)
            if not request.force:
                tokens = (
                    await conn.execute(
                        sa.select(sa.func.count()).where(workflow_tokens.c.workflow_pk == locked.pk)
                    )
                ).scalar_one()
                if tokens:
                    raise FailedPrecondition(
                        f"{locked.name} holds {tokens} token(s); delete them or pass force",
                        reason="WORKFLOW_HAS_TOKENS",
                        metadata={"workflow": locked.name, "tokens": str(tokens)},
                    )
            # Tokens, events, due work and fire outcomes go by cascade.
            await conn.execute(sa.delete(workflows).where(workflows.c.id == locked.pk))
            await self._events.announce_deletion(conn, locked.pk)
        self._events.deleted(locked.pk)
        return wpb.DeleteWorkflowRecordResponse()
