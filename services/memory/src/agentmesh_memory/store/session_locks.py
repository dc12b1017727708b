"""A session's row: found (and locked) by name, and its lease (`SessionLeases`, a part of
`SessionStore`): acquired, renewed and released under the row's lock, each new holder with a
higher epoch, and checked by the writes of a lease holder (`locked`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FailedPrecondition, NotFound
from agentmesh_memory.db.database import Database
from agentmesh_memory.db.tables import sessions
from agentmesh_memory.names import invalid, parse_session_name

from .base import StoreContext, timedelta_of, timestamp

__all__ = [
    "SessionLeases",
    "SessionNotFound",
    "check_owner",
    "lease_holder",
    "lease_ttl",
    "load_session_pk",
    "not_found",
    "session_row",
]

MAX_LEASE = timedelta(hours=1)
DEFAULT_LEASE = timedelta(seconds=30)


class SessionNotFound(NotFound):
    default_reason = "SESSION_NOT_FOUND"


def not_found(session_id: str) -> SessionNotFound:
    name = f"sessions/{session_id}"
    return SessionNotFound(f"session {name!r} not found", metadata={"session": name})


# The session row the current transaction has locked (`SessionStore.locked`): the writes of
# one CommitStep run inside it and need not look the session up again each.
_locked_session: ContextVar[tuple[AsyncConnection, str, str, int] | None] = ContextVar(
    "agentmesh_locked_session", default=None
)


async def load_session_pk(
    conn: AsyncConnection, tenant: str, session_id: str, *, lock: bool = False
) -> int:
    """The surrogate key of a tenant's session; NOT_FOUND for an unknown or foreign one."""
    known = _locked_session.get()
    if known is not None and known[0] is conn and known[1:3] == (tenant, session_id):
        return known[3]
    query = sa.select(sessions.c.id).where(
        sessions.c.tenant_id == tenant, sessions.c.session_id == session_id
    )
    if lock:
        query = query.with_for_update()
    pk = (await conn.execute(query)).scalar()
    if pk is None:
        raise not_found(session_id)
    return int(pk)


async def session_row(
    conn: AsyncConnection, tenant: str, session_id: str, *, lock: bool = False
) -> Any:
    query = sa.select(sessions).where(
        sessions.c.tenant_id == tenant, sessions.c.session_id == session_id
    )
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise not_found(session_id)
    return row


def lease_holder(row: Any, now: datetime) -> str:
    expires = row.lease_expire_time
    if row.lease_owner and expires is not None and expires > now:
        return str(row.lease_owner)
    return ""


def lease_ttl(request_ttl: Any, field: str = "ttl") -> timedelta:
    if not request_ttl.seconds and not request_ttl.nanos:
        return DEFAULT_LEASE
    ttl = timedelta_of(request_ttl)
    if ttl <= timedelta(0) or ttl > MAX_LEASE:
        raise invalid(field, "must be more than 0 and at most 1 hour")
    return ttl


def check_owner(value: str, field: str = "owner") -> str:
    """A lease owner: 1 to 128 characters."""
    if not value.strip():
        raise invalid(field, "must not be empty")
    if len(value) > 128:
        raise invalid(field, "at most 128 characters")
    return value


class SessionLeases:
    """The lease operations of `SessionStore`."""

    _context: StoreContext
    _db: Database

    @asynccontextmanager
    async def locked(
        self, conn: AsyncConnection, tenant: str, session_id: str, *, lease_owner: str = ""
    ) -> AsyncIterator[None]:
        """Lock the session's row until the transaction ends; NOT_FOUND for an unknown one.
        Within the block, `load_session_pk` answers for it without another query.

        With a ``lease_owner``, FAILED_PRECONDITION ``LEASE_LOST`` unless that owner holds
        the unexpired lease; the lock keeps a takeover from slipping in before the commit.
        """
        row = await session_row(conn, tenant, session_id, lock=True)
        if lease_owner:
            holder = lease_holder(row, self._context.now())
            if holder != lease_owner:
                name = f"sessions/{session_id}"
                held = f"is leased by {holder!r}" if holder else "has no unexpired lease"
                raise FailedPrecondition(
                    f"session {name!r} {held}, not by {lease_owner!r}",
                    reason="LEASE_LOST",
                    metadata={"session": name, "holder": holder},
                )
        token = _locked_session.set((conn, tenant, session_id, int(row.id)))
        try:
            yield
        finally:
            _locked_session.reset(token)

    def _lease(self, row: Any) -> memory_pb2.Lease:
        return memory_pb2.Lease(
            session=f"sessions/{row.session_id}",
            owner=row.lease_owner or "",
            expire_time=timestamp(row.lease_expire_time),
            epoch=row.lease_epoch,
        )

    async def acquire_lease(
        self, tenant: str, request: memory_pb2.AcquireLeaseRequest
    ) -> memory_pb2.AcquireLeaseResponse:
        session_id = parse_session_name(request.session, "session")
        owner = check_owner(request.owner)
        ttl = lease_ttl(request.ttl)
        async with self._db.write("AcquireLease") as conn:
            row = await session_row(conn, tenant, session_id, lock=True)
            now = self._context.now()
            holder = lease_holder(row, now)
            if holder and holder != owner:
                raise FailedPrecondition(
                    f"session 'sessions/{session_id}' is leased by another owner until "
                    f"{row.lease_expire_time.isoformat()}",
                    reason="LEASE_HELD",
                    metadata={"session": f"sessions/{session_id}", "owner": holder},
                )
            took_over = bool(row.lease_owner) and row.lease_owner != owner and not holder
            values: dict[str, Any] = {"lease_owner": owner, "lease_expire_time": now + ttl}
            if holder != owner:  # a new acquisition (not a repeat by the holder): new epoch
                values["lease_epoch"] = row.lease_epoch + 1
            result = await conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == row.id)
                .values(**values)
                .returning(*sessions.c)
            )
            return memory_pb2.AcquireLeaseResponse(
                lease=self._lease(result.one()), took_over=took_over
            )

    async def renew_lease(
        self, tenant: str, request: memory_pb2.RenewLeaseRequest
    ) -> memory_pb2.RenewLeaseResponse:
        session_id = parse_session_name(request.session, "session")
        owner = check_owner(request.owner)
        ttl = lease_ttl(request.ttl)
        async with self._db.write("RenewLease") as conn:
            row = await session_row(conn, tenant, session_id, lock=True)
            # The owner may renew even just after expiry, as long as nobody took the lease.
            if row.lease_owner != owner:
                raise FailedPrecondition(
                    f"session 'sessions/{session_id}' is not leased by {owner!r}",
                    reason="LEASE_NOT_HELD",
                    metadata={"session": f"sessions/{session_id}"},
                )
            now = self._context.now()
            result = await conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == row.id)
                .values(lease_expire_time=now + ttl)
                .returning(*sessions.c)
            )
            return memory_pb2.RenewLeaseResponse(lease=self._lease(result.one()))

    async def release_lease(
        self, tenant: str, request: memory_pb2.ReleaseLeaseRequest
    ) -> memory_pb2.ReleaseLeaseResponse:
        session_id = parse_session_name(request.session, "session")
        owner = check_owner(request.owner)
        async with self._db.write("ReleaseLease") as conn:
            row = await session_row(conn, tenant, session_id, lock=True)
            if row.lease_owner is None:
                return memory_pb2.ReleaseLeaseResponse()  # already free: releasing is idempotent
            if row.lease_owner != owner:
                raise FailedPrecondition(
                    f"session 'sessions/{session_id}' is not leased by {owner!r}",
                    reason="LEASE_NOT_HELD",
                    metadata={"session": f"sessions/{session_id}"},
                )
            await conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == row.id)
                .values(lease_owner=None, lease_expire_time=None)
            )
            return memory_pb2.ReleaseLeaseResponse()
