"""Due work: items due at a time, claimed by one orchestrator replica at a time, any tenant's.

A claim sets ``claimed_by``, ``claim_expires`` and increments ``claim_epoch`` in one
statement, ``UPDATE ... WHERE id IN (SELECT ... LIMIT n)``: on PostgreSQL the subquery locks
its rows ``FOR UPDATE SKIP LOCKED`` (concurrent claimers skip each other's rows and re-check
the condition on rows committed meanwhile); on SQLite the statement runs under the database's
single write lock. Either way two claimers never get the same item. A claim whose holder died
expires and the item is claimed again with a higher epoch; the old holder's completion then
no longer matches (owner, epoch) and is refused (CLAIM_LOST), writing nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh_common import FieldViolation
from agentmesh_memory.db.workflow_tables import due_work, schedule_runs, schedules
from agentmesh_memory.names import invalid, invalid_many, parse_session_name

from .base import StoreContext, parse_stored, set_time, timedelta_of, to_datetime
from .workflow_common import (
    ClaimLost,
    find_token_pk,
    parse_schedule_name,
    parse_token_name,
    schedule_not_found,
)

__all__ = ["DueWorkStore", "check_items", "claim_lost", "due_rows"]

MAX_ITEMS = 100
MAX_OWNER = 128
DEFAULT_LIMIT = 10
DEFAULT_LEASE = timedelta(seconds=30)
MAX_LEASE = timedelta(hours=1)
MAX_HORIZON = timedelta(seconds=10)
RECENT_SESSIONS = 10


def check_items(
    items: Sequence[wpb.DueWork], field: str, *, kinds: frozenset[str]
) -> list[FieldViolation]:
    """Violations of due work to store (``kinds``: the kinds allowed here)."""
    if len(items) > MAX_ITEMS:
        return [FieldViolation(field, f"at most {MAX_ITEMS} items")]
    found: list[FieldViolation] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        kind = item.WhichOneof("kind")
        if kind not in kinds:
            allowed = " or ".join(sorted(kinds))
            found.append(FieldViolation(where, f"must be {allowed} work"))
        if not item.HasField("due_time"):
            found.append(FieldViolation(f"{where}.due_time", "must be set"))
        if item.attempt < 0:
            found.append(FieldViolation(f"{where}.attempt", "must not be negative"))
        if kind == "place_agent" and not item.place_agent.place_agent:
            found.append(FieldViolation(f"{where}.place_agent.place_agent", "must not be empty"))
    return found


def due_rows(
    tenant: str,
    items: Sequence[wpb.DueWork],
    *,
    token: str = "",
    token_pk: int | None = None,
    schedule_pks: Sequence[int | None] = (),
) -> list[dict[str, Any]]:
    """Rows for checked items; a token's items get its name filled in."""
    rows = []
    for index, item in enumerate(items):
        kind = item.WhichOneof("kind") or ""
        payload = wpb.DueWork()
        if kind == "place_agent":
            payload.place_agent.CopyFrom(item.place_agent)
            if token:
                payload.place_agent.token = token
        else:
            payload.schedule.CopyFrom(item.schedule)
        rows.append(
            {
                "tenant_id": tenant,
                "kind": kind,
                "document": payload.SerializeToString(),
                "due_time": to_datetime(item.due_time),
                "attempt": item.attempt or 1,
                "claim_epoch": 0,
                "token_pk": token_pk,
                "schedule_pk": schedule_pks[index] if schedule_pks else None,
            }
        )
    return rows


def to_proto(row: Any) -> wpb.DueWork:
    item = parse_stored(wpb.DueWork, row.document)
    item.id = int(row.id)
    item.tenant = str(row.tenant_id)
    set_time(item.due_time, row.due_time)
    item.attempt = int(row.attempt)
    item.claim_epoch = int(row.claim_epoch)
    return item


def claim_lost(claim: wpb.ClaimRef) -> ClaimLost:
    return ClaimLost(
        f"{claim.owner!r} no longer holds due work {claim.id} at epoch {claim.claim_epoch}",
        metadata={"id": str(claim.id), "owner": claim.owner},
    )


def check_claim(claim: wpb.ClaimRef, field: str) -> None:
    if claim.id <= 0:
        raise invalid(f"{field}.id", "must be set")
    if not claim.owner or len(claim.owner) > MAX_OWNER:
        raise invalid(f"{field}.owner", f"must be 1 to {MAX_OWNER} characters")


def held(claim: wpb.ClaimRef) -> Any:
    """The condition that the claim still holds (the owner's claim at that epoch)."""
    return sa.and_(
        due_work.c.id == claim.id,
        due_work.c.claimed_by == claim.owner,
        due_work.c.claim_epoch == claim.claim_epoch,
    )


class DueWorkStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def claim(self, request: wpb.ClaimDueWorkRequest) -> wpb.ClaimDueWorkResponse:
        if not request.owner or len(request.owner) > MAX_OWNER:
            raise invalid("owner", f"must be 1 to {MAX_OWNER} characters")
        if request.limit < 0 or request.limit > MAX_ITEMS:
            raise invalid("limit", f"must be between 1 and {MAX_ITEMS} (0 for {DEFAULT_LIMIT})")
        limit = request.limit or DEFAULT_LIMIT
        lease = timedelta_of(request.lease) if request.HasField("lease") else DEFAULT_LEASE
        if lease <= timedelta(0) or lease > MAX_LEASE:
            raise invalid("lease", f"must be more than 0 and at most {MAX_LEASE}")
        horizon = timedelta_of(request.horizon) if request.HasField("horizon") else timedelta(0)
        if horizon < timedelta(0) or horizon > MAX_HORIZON or horizon >= lease:
            raise invalid(
                "horizon", f"must be between 0 and {MAX_HORIZON}, and shorter than the lease"
            )
        now = self._context.now()
        claimable = sa.and_(
            due_work.c.due_time <= now + horizon,
            sa.or_(due_work.c.claimed_by.is_(None), due_work.c.claim_expires <= now),
        )
        chosen = (
            sa.select(due_work.c.id)
            .where(claimable)
            .order_by(due_work.c.due_time, due_work.c.id)
            .limit(limit)
        )
        if self._db.dialect == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        async with self._db.write("ClaimDueWork") as conn:
            rows = (
                await conn.execute(
                    sa.update(due_work)
                    .where(due_work.c.id.in_(chosen.scalar_subquery()), claimable)
                    .values(
                        claimed_by=request.owner,
                        claim_expires=now + lease,
                        claim_epoch=due_work.c.claim_epoch + 1,
                    )
                    .returning(*due_work.c)
                )
            ).all()
            claimed = sorted(rows, key=lambda r: (r.due_time, r.id))
            next_due = await self._next_due(conn, now, [int(r.id) for r in claimed])
        response = wpb.ClaimDueWorkResponse(items=[to_proto(r) for r in claimed])
        set_time(response.next_due_time, next_due)
        return response

    @staticmethod
    async def _next_due(conn: AsyncConnection, now: datetime, claimed: list[int]) -> Any:
        """When the next item not just claimed can be claimed: its due time, or the end of
        its holder's claim (so a replica that died is taken over when its claim expires)."""
        becomes_claimable = sa.case(
            (
                sa.and_(due_work.c.claimed_by.is_not(None), due_work.c.claim_expires > now),
                sa.case(
                    (due_work.c.claim_expires > due_work.c.due_time, due_work.c.claim_expires),
                    else_=due_work.c.due_time,
                ),
            ),
            else_=due_work.c.due_time,
        )
        query = sa.select(sa.func.min(becomes_claimable))
        if claimed:
            query = query.where(due_work.c.id.not_in(claimed))
        return (await conn.execute(query)).scalar()

    async def complete(self, request: wpb.CompleteDueWorkRequest) -> wpb.CompleteDueWorkResponse:
        check_claim(request.claim, "claim")
        found = check_items(
            request.schedule, "schedule", kinds=frozenset({"place_agent", "schedule"})
        )
        if found:
            raise invalid_many(found)
        if request.attempt < 0:
            raise invalid("attempt", "must not be negative")
        session = request.schedule_run_session
        if session:
            parse_session_name(session, "schedule_run_session")
        claim = request.claim
        async with self._db.write("CompleteDueWork") as conn:
            statement: sa.Update | sa.Delete
            if request.HasField("due_again"):
                statement = (
                    sa.update(due_work)
                    .where(held(claim))
                    .values(
                        due_time=to_datetime(request.due_again),
                        attempt=request.attempt or 1,
                        claimed_by=None,
                        claim_expires=None,
                    )
                )
            else:
                statement = sa.delete(due_work).where(held(claim))
            row = (
                await conn.execute(
                    statement.returning(due_work.c.tenant_id, due_work.c.schedule_pk)
                )
            ).first()
            if row is None:
                raise claim_lost(claim)
            tenant = str(row.tenant_id)
            if session:
                if row.schedule_pk is None:
                    raise invalid("schedule_run_session", "the item is not a schedule's run")
                await self.record_run(conn, tenant, int(row.schedule_pk), session)
            if request.schedule:
                await self.insert(conn, tenant, request.schedule)
        return wpb.CompleteDueWorkResponse()

    async def insert(
        self, conn: AsyncConnection, tenant: str, items: Sequence[wpb.DueWork]
    ) -> None:
        """Store items of either kind in a tenant, resolving their token or schedule."""
        for index, item in enumerate(items):
            token_pk: int | None = None
            schedule_pks: list[int | None] = [None]
            if item.WhichOneof("kind") == "place_agent":
                field = f"schedule[{index}].place_agent.token"
                workflow_id, token_id = parse_token_name(item.place_agent.token, field)
                token_pk = await find_token_pk(conn, tenant, workflow_id, token_id)
            else:
                field = f"schedule[{index}].schedule.schedule"
                schedule_id = parse_schedule_name(item.schedule.schedule, field)
                pk = (
                    await conn.execute(
                        sa.select(schedules.c.id).where(
                            schedules.c.tenant_id == tenant,
                            schedules.c.schedule_id == schedule_id,
                        )
                    )
                ).scalar()
                if pk is None:
                    raise schedule_not_found(schedule_id)
                schedule_pks = [int(pk)]
            await conn.execute(
                sa.insert(due_work),
                due_rows(tenant, [item], token_pk=token_pk, schedule_pks=schedule_pks),
            )

    async def record_run(
        self, conn: AsyncConnection, tenant: str, schedule_pk: int, session: str
    ) -> None:
        row = (
            await conn.execute(
                sa.update(schedules)
                .where(schedules.c.id == schedule_pk)
                .values(runs_started=schedules.c.runs_started + 1)
                .returning(schedules.c.runs_started, schedules.c.recent_sessions)
            )
        ).one()
        recent = [session, *[s for s in (row.recent_sessions or []) if s != session]]
        await conn.execute(
            sa.update(schedules)
            .where(schedules.c.id == schedule_pk)
            .values(recent_sessions=recent[:RECENT_SESSIONS])
        )
        await conn.execute(
            sa.insert(schedule_runs).values(
                schedule_pk=schedule_pk,
                run_number=int(row.runs_started),
                tenant_id=tenant,
                session_id=session.partition("/")[2],
                create_time=self._context.now(),
            )
        )

    async def renew(self, request: wpb.RenewDueWorkRequest) -> wpb.RenewDueWorkResponse:
        check_claim(request.claim, "claim")
        lease = timedelta_of(request.lease) if request.HasField("lease") else DEFAULT_LEASE
        if lease <= timedelta(0) or lease > MAX_LEASE:
            raise invalid("lease", f"must be more than 0 and at most {MAX_LEASE}")
        now = self._context.now()
        async with self._db.write("RenewDueWork") as conn:
            row = (
                await conn.execute(
                    sa.update(due_work)
                    .where(held(request.claim), due_work.c.claim_expires > now)
                    .values(claim_expires=now + lease)
                    .returning(due_work.c.claim_expires)
                )
            ).first()
        if row is None:
            raise claim_lost(request.claim)
        response = wpb.RenewDueWorkResponse()
        set_time(response.expire_time, row.claim_expires)
        return response

    async def release(self, request: wpb.ReleaseDueWorkRequest) -> wpb.ReleaseDueWorkResponse:
        if not request.owner or len(request.owner) > MAX_OWNER:
            raise invalid("owner", f"must be 1 to {MAX_OWNER} characters")
        async with self._db.write("ReleaseDueWork") as conn:
            released = (
                await conn.execute(
                    sa.update(due_work)
                    .where(due_work.c.claimed_by == request.owner)
                    .values(claimed_by=None, claim_expires=None)
                    .returning(due_work.c.id)
                )
            ).all()
        return wpb.ReleaseDueWorkResponse(released=len(released))
