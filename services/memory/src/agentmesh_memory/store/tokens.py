"""Tokens: ``workflows/{workflow_id}/tokens/{token_id}``, created and changed atomically.

A token's creation or change is one transaction with its events and its due work, under the
workflow's row lock (``LockedWorkflow``): CommitToken checks the token's revision, the claim
it completes and a remembered FireTransition outcome before writing anything, so an ABORTED
or FAILED_PRECONDITION answer leaves the token, its events and due work as they were.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh.workflow.v1 import workflow_pb2
from agentmesh_common import FieldViolation
from agentmesh_memory.db.workflow_tables import (
    due_work,
    fire_outcomes,
    workflow_events,
    workflow_tokens,
    workflows,
)
from agentmesh_memory.names import PageToken, check_request_id, invalid, invalid_many, page_size

from .base import StoreContext, check_size, insert_ignore, parse_stored, set_time
from .due_work import check_claim, check_items, claim_lost, due_rows, held
from .workflow_common import (
    RevisionMismatch,
    TokenExists,
    check_place,
    find_token_pk,
    generated_id,
    json_object,
    lock_workflow,
    parse_resource_id,
    parse_token_name,
    parse_workflow_name,
    struct_of,
    token_name,
    token_not_found,
    workflow_name,
    workflow_not_found,
)
from .workflow_events import WorkflowEventStore, check_events
from .workflows import to_proto as workflow_to_proto

__all__ = ["TokenStore"]

MAX_TOKEN_BYTES = 1024 * 1024  # data and metadata together
MAX_MOVE_BYTES = 64 * 1024
PLACE_AGENT_ONLY = frozenset({"place_agent"})


def to_proto(row: Any, workflow_id: str) -> workflow_pb2.Token:
    token = parse_stored(workflow_pb2.Token, row.history)
    token.name = token_name(workflow_id, row.token_id)
    token.place = row.place
    token.data.CopyFrom(struct_of(row.data))
    token.metadata.CopyFrom(struct_of(row.metadata))
    token.revision = int(row.revision)
    set_time(token.create_time, row.create_time)
    set_time(token.update_time, row.update_time)
    return token


def _check_token_body(token: workflow_pb2.Token, field: str) -> None:
    size = token.data.ByteSize() + token.metadata.ByteSize()
    if size > MAX_TOKEN_BYTES:
        raise invalid(field, f"data and metadata are {size} bytes; at most {MAX_TOKEN_BYTES}")


class TokenStore:
    def __init__(self, context: StoreContext, events: WorkflowEventStore) -> None:
        self._context = context
        self._db = context.db
        self._events = events

    async def create(
        self, tenant: str, request: wpb.CreateTokenRecordRequest
    ) -> wpb.CreateTokenRecordResponse:
        workflow_id = parse_workflow_name(request.parent, "parent")
        token_id = (
            parse_resource_id(request.token_id, "token_id", "token id")
            if request.token_id
            else generated_id("tok")
        )
        name = token_name(workflow_id, token_id)
        place = check_place(request.token.place, "token.place")
        _check_token_body(request.token, "token")
        data = json_object(request.token.data, "token.data")
        metadata = json_object(request.token.metadata, "token.metadata")
        request_id = check_request_id(request.request_id) or None
        found = check_events(request.events, workflow_name(workflow_id), name)
        found += check_items(request.schedule, "schedule", kinds=PLACE_AGENT_ONLY)
        if found:
            raise invalid_many(found)
        events = list(request.events)
        pending = self._events.pending()
        now = self._context.now()
        async with self._db.write("CreateTokenRecord") as conn:
            locked = await lock_workflow(conn, self._db, tenant, workflow_id)
            locked.require_place(place, "token.place")
            row = (
                await conn.execute(
                    insert_ignore(self._db, workflow_tokens)
                    .values(
                        tenant_id=tenant,
                        workflow_pk=locked.pk,
                        token_id=token_id,
                        place=place,
                        data=data,
                        metadata=metadata,
                        history=b"",
                        revision=1,
                        create_time=now,
                        update_time=now,
                        request_id=request_id,
                    )
                    .returning(*workflow_tokens.c)
                )
            ).first()
            if row is None:  # a repeat (nothing more is written) or a taken id
                return await self._repeat(conn, locked.pk, workflow_id, token_id, request_id)
            if request.schedule:
                await conn.execute(
                    sa.insert(due_work),
                    due_rows(tenant, request.schedule, token=name, token_pk=int(row.id)),
                )
            last = await self._events.append_in(
                conn, pending, tenant, locked.pk, locked.name, events, name
            )
        pending.publish()
        return wpb.CreateTokenRecordResponse(token=to_proto(row, workflow_id), last_seq=last)

    async def _repeat(
        self,
        conn: AsyncConnection,
        workflow_pk: int,
        workflow_id: str,
        token_id: str,
        request_id: str | None,
    ) -> wpb.CreateTokenRecordResponse:
        if request_id is not None:
            row = (
                await conn.execute(
                    sa.select(workflow_tokens).where(
                        workflow_tokens.c.workflow_pk == workflow_pk,
                        workflow_tokens.c.request_id == request_id,
                    )
                )
            ).first()
            if row is not None:
                last = (
                    await conn.execute(
                        sa.select(sa.func.max(workflow_events.c.seq)).where(
                            workflow_events.c.workflow_pk == workflow_pk,
                            workflow_events.c.token_id == row.token_id,
                        )
                    )
                ).scalar()
                return wpb.CreateTokenRecordResponse(
                    token=to_proto(row, workflow_id), last_seq=int(last or 0)
                )
        name = token_name(workflow_id, token_id)
        raise TokenExists(f"token {name!r} already exists", metadata={"token": name})

    async def get(
        self, tenant: str, request: wpb.GetTokenRecordRequest
    ) -> wpb.GetTokenRecordResponse:
        workflow_id, token_id = parse_token_name(request.name)
        if request.fire_request_id:
            check_request_id(request.fire_request_id, "fire_request_id")
        async with self._db.read("GetTokenRecord") as conn:
            row = (
                await conn.execute(
                    sa.select(workflow_tokens)
                    .join(workflows, workflows.c.id == workflow_tokens.c.workflow_pk)
                    .where(
                        workflows.c.tenant_id == tenant,
                        workflows.c.workflow_id == workflow_id,
                        workflow_tokens.c.token_id == token_id,
                    )
                )
            ).first()
            if row is None:
                raise token_not_found(workflow_id, token_id)
            response = wpb.GetTokenRecordResponse(token=to_proto(row, workflow_id))
            if request.fire_request_id:
                response.fire_outcome.CopyFrom(
                    await _outcome(conn, int(row.id), request.fire_request_id)
                )
            if request.with_workflow:
                workflow = (
                    await conn.execute(
                        sa.select(workflows).where(workflows.c.id == row.workflow_pk)
                    )
                ).one()
                response.workflow.CopyFrom(workflow_to_proto(workflow))
        return response

    async def list(
        self, tenant: str, request: wpb.ListTokenRecordsRequest
    ) -> wpb.ListTokenRecordsResponse:
        workflow_id = parse_workflow_name(request.parent, "parent")
        if request.place:
            check_place(request.place, "place")
        size = page_size(request.page_size)
        query_key = ("tokens", workflow_id, request.place)
        token = PageToken.decode(request.page_token, query_key)
        async with self._db.read("ListTokenRecords") as conn:
            workflow_pk = (
                await conn.execute(
                    sa.select(workflows.c.id).where(
                        workflows.c.tenant_id == tenant, workflows.c.workflow_id == workflow_id
                    )
                )
            ).scalar()
            if workflow_pk is None:
                raise workflow_not_found(workflow_id)
            query = sa.select(workflow_tokens).where(workflow_tokens.c.workflow_pk == workflow_pk)
            if request.place:
                query = query.where(workflow_tokens.c.place == request.place)
            if token is not None:
                if not isinstance(token.after, int):
                    raise invalid("page_token", "is not a token returned by this list")
                query = query.where(workflow_tokens.c.id > token.after)
            rows = (await conn.execute(query.order_by(workflow_tokens.c.id).limit(size + 1))).all()
        response = wpb.ListTokenRecordsResponse(
            tokens=[to_proto(r, workflow_id) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def commit(self, tenant: str, request: wpb.CommitTokenRequest) -> wpb.CommitTokenResponse:
        workflow_id, token_id = parse_token_name(request.token, "token")
        name = token_name(workflow_id, token_id)
        violations: list[FieldViolation] = []
        if request.expected_revision <= 0:
            violations.append(FieldViolation("expected_revision", "must be set (1 or more)"))
        violations += check_events(request.events, workflow_name(workflow_id), name)
        violations += check_items(request.schedule, "schedule", kinds=PLACE_AGENT_ONLY)
        if violations:
            raise invalid_many(violations)
        if request.place:
            check_place(request.place, "place")
        data = json_object(request.data, "data") if request.HasField("data") else None
        metadata = (
            json_object(request.metadata, "metadata") if request.HasField("metadata") else None
        )
        if request.data.ByteSize() + request.metadata.ByteSize() > MAX_TOKEN_BYTES:
            raise invalid("data", f"data and metadata together exceed {MAX_TOKEN_BYTES} bytes")
        if request.HasField("move"):
            check_size(request.move, MAX_MOVE_BYTES, "move")
        if request.HasField("complete"):
            check_claim(request.complete, "complete")
        check_request_id(request.fire_request_id, "fire_request_id")
        events = list(request.events)
        pending = self._events.pending()
        async with self._db.write("CommitToken") as conn:
            locked = await lock_workflow(conn, self._db, tenant, workflow_id)
            row = (
                await conn.execute(
                    sa.select(workflow_tokens).where(
                        workflow_tokens.c.workflow_pk == locked.pk,
                        workflow_tokens.c.token_id == token_id,
                    )
                )
            ).first()
            if row is None:
                raise token_not_found(workflow_id, token_id)
            token_pk = int(row.id)
            if request.fire_request_id:
                outcome = (
                    await conn.execute(
                        sa.select(fire_outcomes.c.event_seq).where(
                            fire_outcomes.c.token_pk == token_pk,
                            fire_outcomes.c.request_id == request.fire_request_id,
                        )
                    )
                ).first()
                if outcome is not None:  # a retry of a commit that happened: write nothing
                    return wpb.CommitTokenResponse(
                        token=to_proto(row, workflow_id), last_seq=int(outcome.event_seq)
                    )
            if int(row.revision) != request.expected_revision:
                raise RevisionMismatch(
                    f"token {name!r} is at revision {row.revision}, "
                    f"not {request.expected_revision}",
                    metadata={"token": name, "revision": str(row.revision)},
                )
            if request.HasField("complete"):
                gone = await conn.execute(
                    sa.delete(due_work)
                    .where(held(request.complete), due_work.c.tenant_id == tenant)
                    .returning(due_work.c.id)
                )
                if gone.first() is None:
                    raise claim_lost(request.complete)
            moved = bool(request.place) and request.place != row.place
            if moved:
                locked.require_place(request.place, "place")
            values: dict[str, Any] = {
                "revision": workflow_tokens.c.revision + 1,
                "update_time": self._context.now(),
            }
            if moved:
                values["place"] = request.place
            if data is not None:
                values["data"] = data
            if metadata is not None:
                values["metadata"] = metadata
            if request.HasField("move"):
                history = parse_stored(workflow_pb2.Token, row.history)
                history.history.append(request.move)
                values["history"] = history.SerializeToString()
            updated = (
                await conn.execute(
                    sa.update(workflow_tokens)
                    .where(workflow_tokens.c.id == token_pk)
                    .values(**values)
                    .returning(*workflow_tokens.c)
                )
            ).one()
            if moved:  # the old stay's due work is void
                await conn.execute(sa.delete(due_work).where(due_work.c.token_pk == token_pk))
            if request.schedule:
                await conn.execute(
                    sa.insert(due_work),
                    due_rows(tenant, request.schedule, token=name, token_pk=token_pk),
                )
            last = await self._events.append_in(
                conn, pending, tenant, locked.pk, locked.name, events, name
            )
            if request.fire_request_id:
                await conn.execute(
                    sa.insert(fire_outcomes).values(
                        token_pk=token_pk,
                        request_id=request.fire_request_id,
                        tenant_id=tenant,
                        fired=request.fired,
                        event_seq=last,
                        create_time=self._context.now(),
                    )
                )
        pending.publish()
        return wpb.CommitTokenResponse(token=to_proto(updated, workflow_id), last_seq=last)

    async def fire_outcome(
        self, tenant: str, request: wpb.GetFireOutcomeRequest
    ) -> wpb.GetFireOutcomeResponse:
        workflow_id, token_id = parse_token_name(request.token, "token")
        if not request.request_id:
            raise invalid("request_id", "must not be empty")
        check_request_id(request.request_id)
        async with self._db.read("GetFireOutcome") as conn:
            token_pk = await find_token_pk(conn, tenant, workflow_id, token_id)
            return await _outcome(conn, token_pk, request.request_id)


async def _outcome(
    conn: AsyncConnection, token_pk: int, request_id: str
) -> wpb.GetFireOutcomeResponse:
    row = (
        await conn.execute(
            sa.select(fire_outcomes.c.fired, fire_outcomes.c.event_seq).where(
                fire_outcomes.c.token_pk == token_pk, fire_outcomes.c.request_id == request_id
            )
        )
    ).first()
    if row is None:
        return wpb.GetFireOutcomeResponse(found=False)
    return wpb.GetFireOutcomeResponse(
        found=True, fired=bool(row.fired), event_seq=int(row.event_seq)
    )
