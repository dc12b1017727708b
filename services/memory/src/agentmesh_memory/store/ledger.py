"""The usage ledger: one row per provider or runner call, and rollups of it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import generation_pb2, operations_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import FieldViolation
from agentmesh_memory.db.tables import executions
from agentmesh_memory.names import (
    PageToken,
    invalid,
    invalid_many,
    new_id,
    page_size,
    parse_session_name,
)

from .base import (
    StoreContext,
    Write,
    duration_from_us,
    duration_us,
    insert_ignore,
    parse_stored,
    set_time,
    to_datetime,
)
from .sessions import load_session_pk

__all__ = ["LedgerStore"]

MAX_EXECUTION_BYTES = 4 * 1024 * 1024
MAX_BATCH = 1000
G = operations_pb2.UsageGrouping
COLUMN_FIELDS = (
    "name",
    "session",
    "agent",
    "task_id",
    "route",
    "provider",
    "model",
    "attempt",
    "latency",
    "time_to_first_token",
    "usage",
    "outcome",
    "idempotency_key",
    "create_time",
    "call_index",
)


def _to_proto(row: Any) -> memory_pb2.Execution:
    execution = parse_stored(memory_pb2.Execution, row.document)
    execution.name = f"executions/{row.execution_id}"
    execution.session = f"sessions/{row.session_id}" if row.session_id else ""
    execution.agent = row.agent
    execution.task_id = row.task_id
    execution.route = row.route
    execution.provider = row.provider
    execution.model = row.model
    execution.attempt = row.attempt
    execution.latency.CopyFrom(duration_from_us(row.latency_us))
    if row.time_to_first_token_us is not None:
        execution.time_to_first_token.CopyFrom(duration_from_us(row.time_to_first_token_us))
    execution.usage.CopyFrom(
        generation_pb2.Usage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.total_tokens,
            cached_prompt_tokens=row.cached_prompt_tokens,
            reasoning_tokens=row.reasoning_tokens,
            cost_micros_usd=row.cost_micros_usd,
            estimated=row.estimated,
        )
    )
    execution.outcome = row.outcome
    execution.idempotency_key = row.idempotency_key or ""
    execution.call_index = row.call_index
    set_time(execution.create_time, row.create_time)
    return execution


def _validate(execution: memory_pb2.Execution, field: str) -> None:
    found: list[FieldViolation] = []
    if not execution.provider.strip():
        found.append(FieldViolation(f"{field}.provider", "must not be empty"))
    for name, limit in (
        ("provider", 64),
        ("model", 255),
        ("route", 255),
        ("agent", 255),
        ("task_id", 63),
        ("idempotency_key", 255),
    ):
        if len(getattr(execution, name)) > limit:
            found.append(FieldViolation(f"{field}.{name}", f"at most {limit} characters"))
    if execution.outcome == memory_pb2.EXECUTION_OUTCOME_UNSPECIFIED:
        found.append(FieldViolation(f"{field}.outcome", "must be set"))
    elif execution.outcome not in memory_pb2.ExecutionOutcome.values():
        found.append(FieldViolation(f"{field}.outcome", "unknown outcome"))
    if execution.attempt < 0:
        found.append(FieldViolation(f"{field}.attempt", "must not be negative"))
    if execution.call_index < 0:
        found.append(FieldViolation(f"{field}.call_index", "must not be negative"))
    for name in ("latency", "time_to_first_token"):
        if duration_us(getattr(execution, name)) < 0:
            found.append(FieldViolation(f"{field}.{name}", "must not be negative"))
    usage = execution.usage
    for name in (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_prompt_tokens",
        "reasoning_tokens",
        "cost_micros_usd",
    ):
        if getattr(usage, name) < 0:
            found.append(FieldViolation(f"{field}.usage.{name}", "must not be negative"))
    if execution.ByteSize() > MAX_EXECUTION_BYTES:
        found.append(FieldViolation(field, f"at most {MAX_EXECUTION_BYTES} bytes"))
    if found:
        raise invalid_many(found)


class LedgerStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def record(
        self, tenant: str, request: memory_pb2.RecordExecutionRequest
    ) -> memory_pb2.RecordExecutionResponse:
        write = self.prepare_record(tenant, request.execution)
        async with self._db.write("RecordExecution") as conn:
            return await write.run(conn)

    async def record_many(
        self, tenant: str, request: memory_pb2.BatchRecordExecutionsRequest
    ) -> memory_pb2.BatchRecordExecutionsResponse:
        """Several records in one transaction: one commit instead of one per call."""
        if len(request.executions) > MAX_BATCH:
            raise invalid("executions", f"at most {MAX_BATCH} per batch")
        writes = [
            self.prepare_record(tenant, execution, f"executions[{index}]")
            for index, execution in enumerate(request.executions)
        ]
        response = memory_pb2.BatchRecordExecutionsResponse()
        if not writes:
            return response
        async with self._db.write("BatchRecordExecutions") as conn:
            for write in writes:
                response.executions.append((await write.run(conn)).execution)
        return response

    def prepare_record(
        self, tenant: str, execution: memory_pb2.Execution, field: str = "execution"
    ) -> Write[memory_pb2.RecordExecutionResponse]:
        """Validate one call record; the write stores it, or returns the first for its key.

        ``field`` is the request field that holds ``execution``, for the violations.
        """
        _validate(execution, field)
        session_id = (
            parse_session_name(execution.session, f"{field}.session") if execution.session else None
        )
        key = execution.idempotency_key or None
        document = memory_pb2.Execution()
        document.CopyFrom(execution)
        for name in COLUMN_FIELDS:
            document.ClearField(name)  # type: ignore[arg-type]
        usage = execution.usage
        total = usage.total_tokens or usage.prompt_tokens + usage.completion_tokens

        async def record(conn: AsyncConnection) -> memory_pb2.RecordExecutionResponse:
            if session_id is not None:
                await load_session_pk(conn, tenant, session_id)
            inserted = (
                await conn.execute(
                    insert_ignore(self._db, executions)
                    .values(
                        tenant_id=tenant,
                        execution_id=new_id(),
                        session_id=session_id,
                        agent=execution.agent,
                        task_id=execution.task_id,
                        route=execution.route,
                        provider=execution.provider,
                        model=execution.model,
                        attempt=execution.attempt,
                        latency_us=duration_us(execution.latency),
                        time_to_first_token_us=duration_us(execution.time_to_first_token)
                        if execution.HasField("time_to_first_token")
                        else None,
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        total_tokens=total,
                        cached_prompt_tokens=usage.cached_prompt_tokens,
                        reasoning_tokens=usage.reasoning_tokens,
                        cost_micros_usd=usage.cost_micros_usd,
                        estimated=usage.estimated,
                        outcome=execution.outcome,
                        idempotency_key=key,
                        call_index=execution.call_index,
                        document=document.SerializeToString(),
                        create_time=self._context.now(),
                    )
                    .returning(*executions.c)
                )
            ).first()
            if inserted is not None:
                return memory_pb2.RecordExecutionResponse(execution=_to_proto(inserted))
            first = (
                await conn.execute(
                    sa.select(executions).where(
                        executions.c.tenant_id == tenant, executions.c.idempotency_key == key
                    )
                )
            ).one()
            return memory_pb2.RecordExecutionResponse(
                execution=_to_proto(first), already_recorded=True
            )

        return Write(record)

    async def list(
        self, tenant: str, request: memory_pb2.ListExecutionsRequest
    ) -> memory_pb2.ListExecutionsResponse:
        size = page_size(request.page_size)
        session_id = parse_session_name(request.session, "session") if request.session else None
        query_key = ("executions", session_id, request.idempotency_key)
        token = PageToken.decode(request.page_token, query_key)
        query = sa.select(executions).where(executions.c.tenant_id == tenant)
        if session_id is not None:
            query = query.where(executions.c.session_id == session_id)
        if request.idempotency_key:
            query = query.where(executions.c.idempotency_key == request.idempotency_key)
        if token is not None:
            if not isinstance(token.after, int):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(executions.c.id > token.after)
        async with self._db.read("ListExecutions") as conn:
            if session_id is not None:
                await load_session_pk(conn, tenant, session_id)
            rows = (await conn.execute(query.order_by(executions.c.id).limit(size + 1))).all()
        response = memory_pb2.ListExecutionsResponse(executions=[_to_proto(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def usage(
        self, tenant: str, request: memory_pb2.GetUsageRequest
    ) -> memory_pb2.GetUsageResponse:
        if request.group_by not in operations_pb2.UsageGrouping.values():
            raise invalid("group_by", "unknown grouping")
        session_id = parse_session_name(request.session, "session") if request.session else None
        start = to_datetime(request.start_time) if request.HasField("start_time") else None
        end = to_datetime(request.end_time) if request.HasField("end_time") else None
        if start is not None and end is not None and end <= start:
            raise invalid("end_time", "must be after start_time")
        c = executions.c
        key: Any
        grouping = request.group_by or operations_pb2.USAGE_GROUPING_TENANT
        if grouping == operations_pb2.USAGE_GROUPING_SESSION:
            key = sa.func.coalesce(c.session_id, "")
        elif grouping == operations_pb2.USAGE_GROUPING_AGENT:
            key = c.agent
        elif grouping == operations_pb2.USAGE_GROUPING_PROVIDER:
            key = c.provider
        elif grouping == operations_pb2.USAGE_GROUPING_MODEL:
            key = c.provider + "/" + c.model
        else:
            key = sa.literal_column("''")  # one row: no GROUP BY at all
        key = key.label("key")
        by_tenant = grouping == operations_pb2.USAGE_GROUPING_TENANT
        query = sa.select(
            key,
            sa.func.sum(c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(c.completion_tokens).label("completion_tokens"),
            sa.func.sum(c.total_tokens).label("total_tokens"),
            sa.func.sum(c.cached_prompt_tokens).label("cached_prompt_tokens"),
            sa.func.sum(c.reasoning_tokens).label("reasoning_tokens"),
            sa.func.sum(c.cost_micros_usd).label("cost_micros_usd"),
            sa.func.max(sa.case((c.estimated, 1), else_=0)).label("estimated"),
            sa.func.count().label("calls"),
            sa.func.sum(
                sa.case((c.outcome == memory_pb2.EXECUTION_OUTCOME_FAILED, 1), else_=0)
            ).label("failed_calls"),
        ).where(c.tenant_id == tenant)
        if not by_tenant:
            query = query.group_by(key).order_by(key)
        if session_id is not None:
            query = query.where(c.session_id == session_id)
        if request.agent:
            query = query.where(c.agent == request.agent)
        if request.provider:
            query = query.where(c.provider == request.provider)
        if start is not None:
            query = query.where(c.create_time >= start)
        if end is not None:
            query = query.where(c.create_time < end)
        async with self._db.read("GetUsage") as conn:
            rows = (await conn.execute(query)).all()
        response = memory_pb2.GetUsageResponse()
        total = response.total
        for row in rows:
            if not row.calls:
                continue  # the tenant aggregate over no rows
            usage = generation_pb2.Usage(
                prompt_tokens=int(row.prompt_tokens or 0),
                completion_tokens=int(row.completion_tokens or 0),
                total_tokens=int(row.total_tokens or 0),
                cached_prompt_tokens=int(row.cached_prompt_tokens or 0),
                reasoning_tokens=int(row.reasoning_tokens or 0),
                cost_micros_usd=int(row.cost_micros_usd or 0),
                estimated=bool(row.estimated),
            )
            shown = tenant if by_tenant else row.key
            if grouping == operations_pb2.USAGE_GROUPING_SESSION and shown:
                shown = f"sessions/{shown}"
            response.rows.add(
                key=shown,
                usage=usage,
                calls=int(row.calls),
                failed_calls=int(row.failed_calls or 0),
            )
            for name in (
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
                "cached_prompt_tokens",
                "reasoning_tokens",
                "cost_micros_usd",
            ):
                setattr(total, name, getattr(total, name) + getattr(usage, name))
            total.estimated = total.estimated or usage.estimated
        return response
