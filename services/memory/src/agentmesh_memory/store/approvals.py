"""Approvals: ``sessions/{session_id}/approvals/{approval_id}``, tool calls waiting for a human.

A pending approval is created by the step that announces it (``CommitStep`` stores it before
its ``approval_requested`` event, in one transaction, under the session's lease), so it is
stored whenever a client can see it and outlives the replica that asked. ``ResolveApproval``
answers it from any replica: it appends the ``approval_resolved`` event (which takes the
session's row lock first, as a step does, and fails once the session has ended) and moves the
approval out of PENDING only if it still is, in one transaction: of two answers racing, one
wins and the other is FAILED_PRECONDITION with nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import approvals_pb2, events_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from agentmesh_memory.db.tables import approvals, sessions
from agentmesh_memory.names import (
    PageToken,
    invalid,
    invalid_many,
    page_size,
    parse_loose_id,
    parse_session_name,
)

from .base import StoreContext, Write, insert_ignore, parse_stored, set_time
from .events import EventStore
from .sessions import load_session_pk

__all__ = ["ApprovalNotFound", "ApprovalStore", "parse_approval_name"]

MAX_APPROVALS = 100  # per step
MAX_APPROVAL_BYTES = 256 * 1024
MAX_COMMENT = 4000
PENDING = approvals_pb2.APPROVAL_STATE_PENDING
ANSWERS = frozenset(
    {
        approvals_pb2.APPROVAL_STATE_APPROVED,
        approvals_pb2.APPROVAL_STATE_REJECTED,
        approvals_pb2.APPROVAL_STATE_EXPIRED,
        approvals_pb2.APPROVAL_STATE_CANCELLED,
    }
)


class ApprovalNotFound(NotFound):
    default_reason = "APPROVAL_NOT_FOUND"


def parse_approval_name(value: str, field: str = "name") -> tuple[str, str]:
    """``sessions/{session_id}/approvals/{approval_id}`` -> (session_id, approval_id)."""
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "sessions" or parts[2] != "approvals":
        raise invalid(
            field,
            f"{value[:120]!r} is not of the form "
            "'sessions/{session_id}/approvals/{approval_id}'",
        )
    session_id = parse_loose_id(parts[1], field, "session id")
    return session_id, parse_loose_id(parts[3], field, "approval id")


def _not_found(session_id: str, approval_id: str) -> ApprovalNotFound:
    name = f"sessions/{session_id}/approvals/{approval_id}"
    return ApprovalNotFound(f"approval {name!r} not found", metadata={"approval": name})


def _to_proto(row: Any, session_id: str) -> approvals_pb2.Approval:
    approval = parse_stored(approvals_pb2.Approval, row.document)
    approval.name = f"sessions/{session_id}/approvals/{row.approval_id}"
    approval.approval_id = row.approval_id
    approval.state = row.state
    set_time(approval.create_time, row.create_time)
    set_time(approval.expire_time, row.expire_time)
    set_time(approval.resolve_time, row.resolve_time)
    return approval


def _document(approval: approvals_pb2.Approval) -> bytes:
    stored = approvals_pb2.Approval()
    stored.CopyFrom(approval)
    for column in ("name", "approval_id", "state", "create_time", "expire_time", "resolve_time"):
        stored.ClearField(column)
    return stored.SerializeToString()


class ApprovalStore:
    """Approvals of each tenant's sessions."""

    def __init__(self, context: StoreContext, *, events: EventStore) -> None:
        self._context = context
        self._db = context.db
        self._events = events

    def prepare_create(
        self, tenant: str, session_id: str, batch: Sequence[approvals_pb2.Approval]
    ) -> Write[memory_pb2.ListApprovalsResponse]:
        """Validate pending approvals for the session; the write stores those not stored yet
        (an approval_id seen before keeps its first record) and returns them as stored.

        Violations name ``approvals[i]``, the field of ``CommitStepRequest``.
        """
        if len(batch) > MAX_APPROVALS:
            raise invalid("approvals", f"at most {MAX_APPROVALS} per step")
        found: list[FieldViolation] = []
        ids: list[str] = []
        for index, approval in enumerate(batch):
            prefix = f"approvals[{index}]"
            try:
                approval_id = parse_loose_id(
                    approval.approval_id, f"{prefix}.approval_id", "approval id"
                )
            except InvalidArgument as error:  # collected with the others
                found.extend(error.violations)
                continue
            ids.append(approval_id)
            expected = f"sessions/{session_id}/approvals/{approval_id}"
            if approval.name and approval.name != expected:
                found.append(FieldViolation(f"{prefix}.name", f"must be empty or {expected}"))
            if approval.state not in (approvals_pb2.APPROVAL_STATE_UNSPECIFIED, PENDING):
                found.append(FieldViolation(f"{prefix}.state", "a new approval is PENDING"))
            if not approval.call.name:
                found.append(FieldViolation(f"{prefix}.call.name", "must not be empty"))
            if not approval.HasField("expire_time"):
                found.append(FieldViolation(f"{prefix}.expire_time", "must be set"))
            if len(approval.comment) > MAX_COMMENT or len(approval.agent) > 255:
                found.append(FieldViolation(prefix, "comment or agent too long"))
            if approval.ByteSize() > MAX_APPROVAL_BYTES:
                found.append(FieldViolation(prefix, f"at most {MAX_APPROVAL_BYTES} bytes"))
        if len(set(ids)) != len(ids):
            found.append(FieldViolation("approvals", "approval ids must be unique"))
        if found:
            raise invalid_many(found)

        async def create(conn: AsyncConnection) -> memory_pb2.ListApprovalsResponse:
            session_pk = await load_session_pk(conn, tenant, session_id)
            now = self._context.now()
            for approval in batch:
                await conn.execute(
                    insert_ignore(self._db, approvals).values(
                        tenant_id=tenant,
                        session_pk=session_pk,
                        approval_id=approval.approval_id,
                        state=PENDING,
                        document=_document(approval),
                        create_time=now,
                        expire_time=approval.expire_time.ToDatetime(tzinfo=UTC),
                    )
                )
            rows = (
                await conn.execute(
                    sa.select(approvals).where(
                        approvals.c.session_pk == session_pk,
                        approvals.c.approval_id.in_([a.approval_id for a in batch]),
                    )
                )
            ).all()
            by_id = {row.approval_id: _to_proto(row, session_id) for row in rows}
            return memory_pb2.ListApprovalsResponse(approvals=[by_id[a.approval_id] for a in batch])

        return Write(create)

    async def get(
        self, tenant: str, request: memory_pb2.GetApprovalRequest
    ) -> memory_pb2.GetApprovalResponse:
        session_id, approval_id = parse_approval_name(request.name)
        async with self._db.read("GetApproval") as conn:
            row = await self._row(conn, tenant, session_id, approval_id)
        return memory_pb2.GetApprovalResponse(approval=_to_proto(row, session_id))

    async def list(
        self, tenant: str, request: memory_pb2.ListApprovalsRequest
    ) -> memory_pb2.ListApprovalsResponse:
        session_id = parse_session_name(request.parent, "parent")
        if request.state not in approvals_pb2.ApprovalState.values():
            raise invalid("state", "unknown approval state")
        size = page_size(request.page_size)
        query_key = ("approvals", session_id, int(request.state))
        token = PageToken.decode(request.page_token, query_key)
        async with self._db.read("ListApprovals") as conn:
            session_pk = await load_session_pk(conn, tenant, session_id)
            query = sa.select(approvals).where(approvals.c.session_pk == session_pk)
            if request.state:
                query = query.where(approvals.c.state == request.state)
            if token is not None:
                if not isinstance(token.after, int):
                    raise invalid("page_token", "is not a token returned by this list")
                query = query.where(approvals.c.id > token.after)
            rows = (await conn.execute(query.order_by(approvals.c.id).limit(size + 1))).all()
        response = memory_pb2.ListApprovalsResponse(
            approvals=[_to_proto(row, session_id) for row in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def resolve(
        self, tenant: str, request: memory_pb2.ResolveApprovalRequest
    ) -> memory_pb2.ResolveApprovalResponse:
        session_id, approval_id = parse_approval_name(request.name)
        if request.state not in ANSWERS:
            raise invalid("state", "must be APPROVED, REJECTED, EXPIRED or CANCELLED")
        if len(request.comment) > MAX_COMMENT:
            raise invalid("comment", f"at most {MAX_COMMENT} characters")

        async def resolve(conn: AsyncConnection) -> memory_pb2.ResolveApprovalResponse:
            row = await self._row(conn, tenant, session_id, approval_id)
            if row.state != PENDING:
                raise _answered(row, session_id)
            now = self._context.now()
            resolved = _to_proto(row, session_id)
            resolved.state = request.state
            resolved.comment = request.comment
            resolved.resolve_time.FromDatetime(now)
            # The event first: it locks the session's row (as a step does) and refuses an
            # ended session; then the approval moves only if it is still PENDING.
            event = events_pb2.SessionEvent(
                agent=resolved.agent,
                task_id=resolved.task_id,
                approval_resolved=events_pb2.ApprovalResolved(approval=resolved),
            )
            append = self._events.prepare_append(tenant, session_id, [event])
            appended = await append.run(conn)
            moved = await conn.execute(
                sa.update(approvals)
                .where(approvals.c.id == row.id, approvals.c.state == PENDING)
                .values(
                    state=request.state,
                    resolve_time=now,
                    document=_document(resolved),
                )
                .returning(approvals.c.id)
            )
            if moved.first() is None:  # answered meanwhile (PostgreSQL): roll it all back
                raise _answered(await self._row(conn, tenant, session_id, approval_id), session_id)
            publish.append(append.after_commit)
            return memory_pb2.ResolveApprovalResponse(approval=resolved, seq=appended.last_seq)

        publish: list[Any] = []
        response = await self._context.idempotent(
            tenant,
            "ResolveApproval",
            request.request_id,
            request,
            memory_pb2.ResolveApprovalResponse,
            resolve,
        )
        for after_commit in publish:
            after_commit()
        return response

    async def _row(
        self, conn: AsyncConnection, tenant: str, session_id: str, approval_id: str
    ) -> Any:
        row = (
            await conn.execute(
                sa.select(approvals)
                .join(sessions, sessions.c.id == approvals.c.session_pk)
                .where(
                    sessions.c.tenant_id == tenant,
                    sessions.c.session_id == session_id,
                    approvals.c.approval_id == approval_id,
                )
            )
        ).first()
        if row is None:
            raise _not_found(session_id, approval_id)
        return row


def _answered(row: Any, session_id: str) -> FailedPrecondition:
    name = f"sessions/{session_id}/approvals/{row.approval_id}"
    state = approvals_pb2.ApprovalState.Name(row.state).removeprefix("APPROVAL_STATE_")
    return FailedPrecondition(
        f"approval {name!r} was already answered ({state.lower()})",
        reason="APPROVAL_RESOLVED",
        metadata={"approval": name, "state": state},
    )
