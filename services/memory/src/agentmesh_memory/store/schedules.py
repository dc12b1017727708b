"""Schedule records: ``schedules/{schedule_id}``, session templates started when due.

The orchestrator validates a schedule and computes its due times; this store keeps it with
its first due work (one transaction), counts the runs started (CompleteDueWork records them),
and answers how many runs are active: runs whose session has not ended.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import sessions_pb2
from agentmesh.memory.v1 import workflows_pb2 as wpb
from agentmesh.workflow.v1 import schedule_pb2
from agentmesh_memory.db.tables import sessions
from agentmesh_memory.db.workflow_tables import due_work, schedule_runs, schedules
from agentmesh_memory.names import PageToken, check_request_id, invalid, page_size

from .base import StoreContext, check_size, insert_ignore, parse_stored, set_time
from .due_work import due_rows
from .workflow_common import (
    ScheduleExists,
    generated_id,
    parse_resource_id,
    parse_schedule_name,
    schedule_not_found,
)

__all__ = ["ScheduleStore"]

MAX_SCHEDULE_BYTES = 256 * 1024
COLUMN_FIELDS = (
    "name",
    "paused",
    "runs_started",
    "next_run_time",
    "recent_sessions",
    "create_time",
)
ENDED = (
    sessions_pb2.SESSION_STATUS_COMPLETED,
    sessions_pb2.SESSION_STATUS_FAILED,
    sessions_pb2.SESSION_STATUS_CANCELLED,
)

# When a schedule's next run is due: the earliest of its due work (ix_due_work_schedule_pk).
_next_due = (
    sa.select(sa.func.min(due_work.c.due_time))
    .where(due_work.c.schedule_pk == schedules.c.id)
    .scalar_subquery()
    .label("next_due")
)


def to_proto(row: Any, next_due: Any) -> schedule_pb2.Schedule:
    schedule = parse_stored(schedule_pb2.Schedule, row.document)
    schedule.name = f"schedules/{row.schedule_id}"
    schedule.paused = bool(row.paused)
    schedule.runs_started = int(row.runs_started)
    schedule.recent_sessions.extend(row.recent_sessions or [])
    set_time(schedule.create_time, row.create_time)
    set_time(schedule.next_run_time, next_due)
    return schedule


class ScheduleStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    def _select(self) -> Any:
        return sa.select(schedules, _next_due)

    async def create(
        self, tenant: str, request: wpb.CreateScheduleRecordRequest
    ) -> wpb.CreateScheduleRecordResponse:
        schedule_id = (
            parse_resource_id(request.schedule_id, "schedule_id", "schedule id")
            if request.schedule_id
            else generated_id("sched")
        )
        stored = schedule_pb2.Schedule()
        stored.CopyFrom(request.schedule)
        paused = stored.paused
        for name in COLUMN_FIELDS:
            stored.ClearField(name)  # type: ignore[arg-type]
        check_size(stored, MAX_SCHEDULE_BYTES, "schedule")
        request_id = check_request_id(request.request_id) or None
        name = f"schedules/{schedule_id}"
        async with self._db.write("CreateScheduleRecord") as conn:
            row = (
                await conn.execute(
                    insert_ignore(self._db, schedules)
                    .values(
                        tenant_id=tenant,
                        schedule_id=schedule_id,
                        document=stored.SerializeToString(),
                        paused=paused,
                        runs_started=0,
                        recent_sessions=[],
                        create_time=self._context.now(),
                        request_id=request_id,
                    )
                    .returning(schedules.c.id)
                )
            ).first()
            if row is None:
                pk = await self._repeat(conn, tenant, request_id, name)
            else:
                pk = int(row.id)
                if request.HasField("first_due_time"):
                    first = wpb.DueWork(schedule=wpb.ScheduleWork(schedule=name, run_number=1))
                    first.due_time.CopyFrom(request.first_due_time)
                    await conn.execute(
                        sa.insert(due_work), due_rows(tenant, [first], schedule_pks=[pk])
                    )
            created = (await conn.execute(self._select().where(schedules.c.id == pk))).one()
        return wpb.CreateScheduleRecordResponse(schedule=to_proto(created, created.next_due))

    async def _repeat(
        self, conn: AsyncConnection, tenant: str, request_id: str | None, name: str
    ) -> int:
        if request_id is not None:
            pk = (
                await conn.execute(
                    sa.select(schedules.c.id).where(
                        schedules.c.tenant_id == tenant, schedules.c.request_id == request_id
                    )
                )
            ).scalar()
            if pk is not None:
                return int(pk)
        raise ScheduleExists(f"schedule {name!r} already exists", metadata={"schedule": name})

    async def _row(self, conn: AsyncConnection, tenant: str, schedule_id: str) -> Any:
        row = (
            await conn.execute(
                self._select().where(
                    schedules.c.tenant_id == tenant, schedules.c.schedule_id == schedule_id
                )
            )
        ).first()
        if row is None:
            raise schedule_not_found(schedule_id)
        return row

    async def get(
        self, tenant: str, request: wpb.GetScheduleRecordRequest
    ) -> wpb.GetScheduleRecordResponse:
        schedule_id = parse_schedule_name(request.name)
        async with self._db.read("GetScheduleRecord") as conn:
            row = await self._row(conn, tenant, schedule_id)
            active = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(schedule_runs)
                    .join(
                        sessions,
                        sa.and_(
                            sessions.c.tenant_id == schedule_runs.c.tenant_id,
                            sessions.c.session_id == schedule_runs.c.session_id,
                        ),
                    )
                    .where(schedule_runs.c.schedule_pk == row.id, sessions.c.status.not_in(ENDED))
                )
            ).scalar_one()
        return wpb.GetScheduleRecordResponse(
            schedule=to_proto(row, row.next_due), active_runs=int(active)
        )

    async def list(
        self, tenant: str, request: wpb.ListScheduleRecordsRequest
    ) -> wpb.ListScheduleRecordsResponse:
        size = page_size(request.page_size)
        query_key = ("schedules",)
        token = PageToken.decode(request.page_token, query_key)
        query = self._select().where(schedules.c.tenant_id == tenant)
        if token is not None:
            if not isinstance(token.after, str):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(schedules.c.schedule_id > token.after)
        async with self._db.read("ListScheduleRecords") as conn:
            rows = (
                await conn.execute(query.order_by(schedules.c.schedule_id).limit(size + 1))
            ).all()
        response = wpb.ListScheduleRecordsResponse(
            schedules=[to_proto(r, r.next_due) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(str(rows[size - 1].schedule_id)).encode(query_key)
        return response

    async def update(
        self, tenant: str, request: wpb.UpdateScheduleRecordRequest
    ) -> wpb.UpdateScheduleRecordResponse:
        schedule_id = parse_schedule_name(request.name)
        async with self._db.write("UpdateScheduleRecord") as conn:
            updated = (
                await conn.execute(
                    sa.update(schedules)
                    .where(schedules.c.tenant_id == tenant, schedules.c.schedule_id == schedule_id)
                    .values(paused=request.paused)
                    .returning(schedules.c.id)
                )
            ).first()
            if updated is None:
                raise schedule_not_found(schedule_id)
            row = await self._row(conn, tenant, schedule_id)
        return wpb.UpdateScheduleRecordResponse(schedule=to_proto(row, row.next_due))

    async def delete(
        self, tenant: str, request: wpb.DeleteScheduleRecordRequest
    ) -> wpb.DeleteScheduleRecordResponse:
        schedule_id = parse_schedule_name(request.name)
        async with self._db.write("DeleteScheduleRecord") as conn:
            pk = (
                await conn.execute(
                    sa.select(schedules.c.id).where(
                        schedules.c.tenant_id == tenant, schedules.c.schedule_id == schedule_id
                    )
                )
            ).scalar()
            if pk is None:
                raise schedule_not_found(schedule_id)
            # Due work first, as CompleteDueWork locks it before the schedule (no deadlock).
            await conn.execute(sa.delete(due_work).where(due_work.c.schedule_pk == pk))
            await conn.execute(sa.delete(schedules).where(schedules.c.id == pk))
        return wpb.DeleteScheduleRecordResponse()
