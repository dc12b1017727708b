"""Sessions (``sessions/{session_id}``) and their status machine; their rows and leases are in
session_locks.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import AlreadyExists, FailedPrecondition, FieldViolation
from agentmesh_memory.db.tables import sessions, tasks
from agentmesh_memory.names import (
    PageToken,
    invalid,
    invalid_many,
    new_id,
    page_size,
    parse_loose_id,
    parse_session_name,
)

from .agents import validate_agent
from .base import (
    StoreContext,
    Write,
    check_size,
    insert_ignore,
    parse_stored,
    set_time,
)
from .session_locks import (
    SessionLeases,
    SessionNotFound,
    check_owner,
    lease_holder,
    load_session_pk,
    session_row,
)

__all__ = ["SessionNotFound", "SessionStore", "check_owner", "load_session_pk"]

S = sessions_pb2.SessionStatus
PENDING, RUNNING = sessions_pb2.SESSION_STATUS_PENDING, sessions_pb2.SESSION_STATUS_RUNNING
TERMINAL = frozenset(
    {
        sessions_pb2.SESSION_STATUS_COMPLETED,
        sessions_pb2.SESSION_STATUS_FAILED,
        sessions_pb2.SESSION_STATUS_CANCELLED,
    }
)
# The only moves; staying in the same status is not a move and is allowed (retries).
TRANSITIONS: dict[int, frozenset[int]] = {
    PENDING: frozenset({RUNNING, sessions_pb2.SESSION_STATUS_CANCELLED}),
    RUNNING: TERMINAL,
}
UPDATABLE = frozenset(
    {
        "status",
        "final_answer",
        "error",
        "usage",
        "rounds_completed",
        "plan",
        "agents",
        "inline_agents",
        "builtin_agents",
        "metadata",
    }
)
# Kept in columns (or computed), not in the stored document.
COLUMN_FIELDS = (
    "name",
    "goal",
    "strategy",
    "status",
    "parent",
    "create_time",
    "update_time",
    "start_time",
    "end_time",
    "lease_owner",
    "last_event_seq",
)
MAX_SESSION_BYTES = 1024 * 1024
MAX_AGENTS = 64


def _document(session: sessions_pb2.Session) -> bytes:
    stored = sessions_pb2.Session()
    stored.CopyFrom(session)
    for name in COLUMN_FIELDS:
        stored.ClearField(name)  # type: ignore[arg-type]
    return stored.SerializeToString()


def to_proto(row: Any, now: datetime) -> sessions_pb2.Session:
    session = parse_stored(sessions_pb2.Session, row.document)
    session.name = f"sessions/{row.session_id}"
    session.goal = row.goal
    session.strategy = row.strategy
    session.status = row.status
    session.parent = f"sessions/{row.parent_id}" if row.parent_id else ""
    set_time(session.create_time, row.create_time)
    set_time(session.update_time, row.update_time)
    set_time(session.start_time, row.start_time)
    set_time(session.end_time, row.end_time)
    session.lease_owner = lease_holder(row, now)
    session.last_event_seq = row.last_event_seq
    return session


def _validate_new(session: sessions_pb2.Session) -> None:
    found: list[FieldViolation] = []
    if not session.goal.strip():
        found.append(FieldViolation("session.goal", "must not be empty"))
    elif len(session.goal) > 100_000:
        found.append(FieldViolation("session.goal", "at most 100000 characters"))
    if session.strategy not in sessions_pb2.Strategy.values():
        found.append(FieldViolation("session.strategy", f"unknown strategy {session.strategy}"))
    found.extend(_member_violations(session))
    limits = session.limits
    for name in (
        "max_rounds",
        "max_total_tokens",
        "max_parallel_tasks",
        "max_plan_tasks",
        "max_task_retries",
    ):
        if getattr(limits, name) < 0:
            found.append(FieldViolation(f"session.limits.{name}", "must not be negative"))
    if len(session.metadata) > 64:
        found.append(FieldViolation("session.metadata", "at most 64 entries"))
    if session.ByteSize() > MAX_SESSION_BYTES:
        found.append(FieldViolation("session", f"at most {MAX_SESSION_BYTES} bytes"))
    if found:
        raise invalid_many(found)


def _member_violations(
    session: sessions_pb2.Session, field: str = "session"
) -> list[FieldViolation]:
    found: list[FieldViolation] = []
    if len(session.agents) + len(session.inline_agents) > MAX_AGENTS:
        found.append(FieldViolation(f"{field}.agents", f"at most {MAX_AGENTS} agents"))
    for index, agent in enumerate(session.agents):
        if not agent.strip() or len(agent) > 255:
            found.append(FieldViolation(f"{field}.agents[{index}]", "must be 1-255 characters"))
    names: set[str] = set()
    for index, inline in enumerate(session.inline_agents):
        prefix = f"{field}.inline_agents[{index}]"
        if not inline.name.strip():
            found.append(FieldViolation(f"{prefix}.name", "must not be empty"))
        elif inline.name in names:
            found.append(FieldViolation(f"{prefix}.name", "is used twice"))
        names.add(inline.name)
        try:
            validate_agent(inline, prefix)
        except Exception as error:
            found.extend(getattr(error, "violations", ()))
    return found


class SessionStore(SessionLeases):
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def create(
        self, tenant: str, request: memory_pb2.CreateSessionRequest
    ) -> memory_pb2.CreateSessionResponse:
        session_id = (
            parse_loose_id(request.session_id, "session_id", "session id")
            if request.session_id
            else new_id()
        )
        session = request.session
        _validate_new(session)
        parent_id = parse_session_name(session.parent, "session.parent") if session.parent else None
        if parent_id == session_id:
            raise invalid("session.parent", "a session cannot be its own parent")

        async def create(conn: AsyncConnection) -> memory_pb2.CreateSessionResponse:
            if parent_id is not None:
                await load_session_pk(conn, tenant, parent_id)
            now = self._context.now()
            stored = sessions_pb2.Session()
            stored.CopyFrom(session)
            for name in ("rounds_completed", "final_answer", "error", "usage", "plan"):
                stored.ClearField(name)
            row = (
                await conn.execute(
                    insert_ignore(self._db, sessions)
                    .values(
                        tenant_id=tenant,
                        session_id=session_id,
                        parent_id=parent_id,
                        status=PENDING,
                        strategy=session.strategy,
                        goal=session.goal,
                        document=_document(stored),
                        lease_epoch=0,
                        last_event_seq=0,
                        create_time=now,
                        update_time=now,
                    )
                    .returning(*sessions.c)
                )
            ).first()
            if row is None:
                name = f"sessions/{session_id}"
                raise AlreadyExists(
                    f"session {name!r} already exists",
                    reason="SESSION_EXISTS",
                    metadata={"session": name},
                )
            return memory_pb2.CreateSessionResponse(session=to_proto(row, now))

        return await self._context.idempotent(
            tenant,
            "CreateSession",
            request.request_id,
            request,
            memory_pb2.CreateSessionResponse,
            create,
        )

    async def get(
        self, tenant: str, request: memory_pb2.GetSessionRequest
    ) -> memory_pb2.GetSessionResponse:
        session_id = parse_session_name(request.name)
        async with self._db.read("GetSession") as conn:
            row = await session_row(conn, tenant, session_id)
            task_docs = (
                await conn.execute(
                    sa.select(tasks).where(tasks.c.session_pk == row.id).order_by(tasks.c.id)
                )
            ).all()
        session = to_proto(row, self._context.now())
        if task_docs:
            from .work import task_to_proto

            del session.plan.tasks[:]
            session.plan.tasks.extend(task_to_proto(t, row.session_id) for t in task_docs)
        return memory_pb2.GetSessionResponse(session=session)

    async def list(
        self, tenant: str, request: memory_pb2.ListSessionsRequest
    ) -> memory_pb2.ListSessionsResponse:
        size = page_size(request.page_size)
        if request.status not in sessions_pb2.SessionStatus.values():
            raise invalid("status", f"unknown status {request.status}")
        parent_id = parse_session_name(request.parent, "parent") if request.parent else None
        query_key = ("sessions", request.status, parent_id, request.lease_expired_only)
        token = PageToken.decode(request.page_token, query_key)
        query = sa.select(sessions).where(sessions.c.tenant_id == tenant)
        if request.status:
            query = query.where(sessions.c.status == request.status)
        if parent_id is not None:
            query = query.where(sessions.c.parent_id == parent_id)
        now = self._context.now()
        if request.lease_expired_only:
            query = query.where(
                sessions.c.status == RUNNING,
                sa.or_(
                    sessions.c.lease_expire_time.is_(None),
                    sessions.c.lease_expire_time <= now,
                ),
            )
        if token is not None:
            if not isinstance(token.after, int):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(sessions.c.id < token.after)
        query = query.order_by(sessions.c.id.desc()).limit(size + 1)
        async with self._db.read("ListSessions") as conn:
            rows = (await conn.execute(query)).all()
        response = memory_pb2.ListSessionsResponse(sessions=[to_proto(r, now) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def list_orphaned(
        self, request: memory_pb2.ListOrphanedSessionsRequest
    ) -> memory_pb2.ListOrphanedSessionsResponse:
        """RUNNING sessions of every tenant whose lease expired, oldest first."""
        size = page_size(request.page_size)
        query_key = ("orphaned",)
        token = PageToken.decode(request.page_token, query_key)
        now = self._context.now()
        query = sa.select(sessions).where(
            sessions.c.status == RUNNING,
            sa.or_(sessions.c.lease_expire_time.is_(None), sessions.c.lease_expire_time <= now),
        )
        if token is not None:
            if not isinstance(token.after, int):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(sessions.c.id > token.after)
        query = query.order_by(sessions.c.id).limit(size + 1)
        async with self._db.read("ListOrphanedSessions") as conn:
            rows = (await conn.execute(query)).all()
        response = memory_pb2.ListOrphanedSessionsResponse(
            sessions=[
                memory_pb2.OrphanedSession(tenant=row.tenant_id, session=to_proto(row, now))
                for row in rows[:size]
            ]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def update(
        self, tenant: str, request: memory_pb2.UpdateSessionRequest
    ) -> memory_pb2.UpdateSessionResponse:
        session_id = parse_session_name(request.session.name, "session.name")
        write = self.prepare_update(tenant, session_id, request.session, request.update_mask)
        return await self._context.idempotent(
            tenant,
            "UpdateSession",
            request.request_id,
            request,
            memory_pb2.UpdateSessionResponse,
            write.run,
        )

    def prepare_update(
        self,
        tenant: str,
        session_id: str,
        change: sessions_pb2.Session,
        update_mask: field_mask_pb2.FieldMask,
        field: str = "session",
    ) -> Write[memory_pb2.UpdateSessionResponse]:
        """Validate a change; the write applies it under the session's row lock.

        ``field`` is the request field that holds ``change``, for the violations.
        """
        paths = list(update_mask.paths)
        if not paths:
            raise invalid("update_mask", "must name the fields to change")
        for path in paths:
            if path not in UPDATABLE:
                raise invalid("update_mask", f"{path!r} cannot be updated")
        if "status" in paths and change.status not in sessions_pb2.SessionStatus.values():
            raise invalid(f"{field}.status", f"unknown status {change.status}")
        if "status" in paths and change.status == sessions_pb2.SESSION_STATUS_UNSPECIFIED:
            raise invalid(f"{field}.status", "must be set when named in update_mask")
        if "rounds_completed" in paths and change.rounds_completed < 0:
            raise invalid(f"{field}.rounds_completed", "must not be negative")
        if {"agents", "inline_agents"} & set(paths):
            found = _member_violations(change, field)
            if found:
                raise invalid_many(found)
        check_size(change, MAX_SESSION_BYTES, field)
        mask = field_mask_pb2.FieldMask(paths=[p for p in paths if p != "status"])

        async def update(conn: AsyncConnection) -> memory_pb2.UpdateSessionResponse:
            row = await session_row(conn, tenant, session_id, lock=True)
            now = self._context.now()
            session = to_proto(row, now)
            values: dict[str, Any] = {"update_time": now}
            if "status" in paths and change.status != row.status:
                allowed = TRANSITIONS.get(row.status, frozenset())
                if change.status not in allowed:
                    raise FailedPrecondition(
                        f"session 'sessions/{session_id}' cannot go from "
                        f"{S.Name(row.status)} to {S.Name(change.status)}",
                        reason="INVALID_STATUS_TRANSITION",
                        metadata={
                            "session": f"sessions/{session_id}",
                            "from": S.Name(row.status),
                            "to": S.Name(change.status),
                        },
                    )
                values["status"] = change.status
                if change.status == RUNNING:
                    values["start_time"] = now
                if change.status in TERMINAL:
                    values["end_time"] = now
            if mask.paths:
                mask.MergeMessage(
                    change, session, replace_message_field=True, replace_repeated_field=True
                )
                if "metadata" in mask.paths:
                    session.metadata.clear()
                    session.metadata.update(change.metadata)
                values["document"] = _document(session)
            result = await conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == row.id)
                .values(**values)
                .returning(*sessions.c)
            )
            return memory_pb2.UpdateSessionResponse(session=to_proto(result.one(), now))

        return Write(update)
