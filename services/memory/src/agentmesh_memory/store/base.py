"""What every store shares: the database, a clock, time conversions, idempotent writes.

A *store* is a plain async class holding the rules of one resource family (validation,
state transitions, idempotency) and its SQL. Stores take and return the contract's message
types (the typed values of this service) and never import ``grpc``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh_common import InvalidArgument
from agentmesh_memory.db.database import Database
from agentmesh_memory.db.tables import request_log
from agentmesh_memory.names import check_request_id, invalid

__all__ = [
    "Clock",
    "StoreContext",
    "Write",
    "duration_from_us",
    "insert_ignore",
    "system_clock",
    "timestamp",
    "to_datetime",
]

M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=Message)
Clock = Callable[[], datetime]


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Write(Generic[R]):
    """A validated write, ready to run inside a write transaction the caller opens.

    Stores split each write RPC into validation (which builds a ``Write``) and running it, so
    one transaction can run several of them (``CommitStep``). ``after_commit`` holds what
    must wait until that transaction committed (telling event watchers); call it only then.
    """

    run: Callable[[AsyncConnection], Awaitable[R]]
    after_commit: Callable[[], None] = _nothing


def system_clock() -> datetime:
    return datetime.now(UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp for ``value`` (None stays None)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def set_time(target: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


def to_datetime(value: timestamp_pb2.Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def duration_us(value: duration_pb2.Duration) -> int:
    return value.ToMicroseconds()


def duration_from_us(value: int) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromMicroseconds(value)
    return result


def timedelta_of(value: duration_pb2.Duration) -> timedelta:
    return value.ToTimedelta()


def insert_ignore(db: Database, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for the engine in use (never aborts a transaction)."""
    if db.dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def upsert(db: Database, table: sa.Table) -> Any:
    """A dialect ``insert`` whose ``on_conflict_do_update`` the caller completes."""
    return postgresql.insert(table) if db.dialect == "postgresql" else sqlite.insert(table)


def parse_stored(message_type: type[M], data: bytes) -> M:
    try:
        return message_type.FromString(data)
    except DecodeError as error:  # only a corrupted row can get here
        raise RuntimeError(f"stored {message_type.__name__} does not parse") from error


def check_size(message: Message, limit: int, field: str) -> None:
    size = message.ByteSize()
    if size > limit:
        raise invalid(field, f"is {size} bytes; at most {limit} are allowed")


def check_text(value: str, limit: int, field: str, *, required: bool = False) -> None:
    if required and not value.strip():
        raise invalid(field, "must not be empty")
    if len(value) > limit:
        raise invalid(field, f"is {len(value)} characters; at most {limit} are allowed")


@dataclass
class StoreContext:
    """The database, the clock and the idempotency log, shared by every store."""

    db: Database
    clock: Clock = field(default=system_clock)

    def now(self) -> datetime:
        return self.clock()

    async def idempotent(
        self,
        tenant: str,
        method: str,
        request_id: str,
        request: Message,
        response_type: type[M],
        operation: Callable[[AsyncConnection], Awaitable[M]],
    ) -> M:
        """Run ``operation`` in one write transaction; with a ``request_id``, at most once.

        The request_id is claimed first in the same transaction, so a concurrent twin waits
        for this one and then answers with its stored response. A repeat whose request
        differs from the first is INVALID_ARGUMENT rather than silently answered.
        """
        check_request_id(request_id)
        if not request_id:
            async with self.db.write(method) as conn:
                return await operation(conn)
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        async with self.db.write(method) as conn:
            claimed = await conn.execute(
                insert_ignore(self.db, request_log)
                .values(
                    tenant_id=tenant,
                    method=method,
                    request_id=request_id,
                    request_hash=digest,
                    response=b"",
                    create_time=self.now(),
                )
                .returning(request_log.c.request_id)
            )
            if claimed.first() is None:
                row = (
                    await conn.execute(
                        sa.select(request_log.c.request_hash, request_log.c.response).where(
                            request_log.c.tenant_id == tenant,
                            request_log.c.method == method,
                            request_log.c.request_id == request_id,
                        )
                    )
                ).one()
                if row.request_hash != digest:
                    raise InvalidArgument(
                        "request_id was already used for a different request",
                        violations=[],
                        reason="REQUEST_ID_REUSED",
                    )
                return parse_stored(response_type, row.response)
            result = await operation(conn)
            await conn.execute(
                sa.update(request_log)
                .where(
                    request_log.c.tenant_id == tenant,
                    request_log.c.method == method,
                    request_log.c.request_id == request_id,
                )
                .values(response=result.SerializeToString())
            )
            return result
