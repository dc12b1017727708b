"""A session's plan (tasks); its conversation (messages) is in ``messages.py``."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from google.protobuf import field_mask_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import agents_pb2, sessions_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import AlreadyExists, FailedPrecondition, FieldViolation, NotFound
from agentmesh_memory.db.tables import tasks
from agentmesh_memory.names import (
    PageToken,
    invalid,
    invalid_many,
    page_size,
    parse_loose_id,
    parse_session_name,
    parse_task_name,
)

from .base import StoreContext, parse_stored, set_time
from .messages import MessageStore
from .sessions import load_session_pk

__all__ = ["MessageStore", "TaskNotFound", "TaskStore", "task_to_proto"]

MAX_BATCH = 1000
MAX_CONTENT = 1024 * 1024
MAX_TASK_BYTES = 1024 * 1024

T = sessions_pb2.TaskStatus
T_PENDING, T_RUNNING = sessions_pb2.TASK_STATUS_PENDING, sessions_pb2.TASK_STATUS_RUNNING
T_FAILED = sessions_pb2.TASK_STATUS_FAILED
TASK_ENDED = frozenset(
    {
        sessions_pb2.TASK_STATUS_COMPLETED,
        sessions_pb2.TASK_STATUS_FAILED,
        sessions_pb2.TASK_STATUS_CANCELLED,
        sessions_pb2.TASK_STATUS_SKIPPED,
    }
)
TASK_TRANSITIONS: dict[int, frozenset[int]] = {
    T_PENDING: frozenset(
        {
            T_RUNNING,
            sessions_pb2.TASK_STATUS_COMPLETED,
            T_FAILED,
            sessions_pb2.TASK_STATUS_CANCELLED,
            sessions_pb2.TASK_STATUS_SKIPPED,
        }
    ),
    T_RUNNING: frozenset(
        {
            T_PENDING,  # requeued after a failed attempt: a retry
            sessions_pb2.TASK_STATUS_COMPLETED,
            T_FAILED,
            sessions_pb2.TASK_STATUS_CANCELLED,
            sessions_pb2.TASK_STATUS_SKIPPED,
        }
    ),
    T_FAILED: frozenset({T_PENDING, T_RUNNING, sessions_pb2.TASK_STATUS_CANCELLED}),
}
RETRIES = frozenset({(T_FAILED, T_PENDING), (T_FAILED, T_RUNNING), (T_RUNNING, T_PENDING)})
TASK_UPDATABLE = frozenset({"status", "output", "error", "retry_count", "agent", "usage"})
TASK_COLUMN_FIELDS = (
    "name",
    "task_id",
    "parent_task_id",
    "agent",
    "agent_type",
    "depends_on",
    "priority",
    "status",
    "output",
    "retry_count",
    "create_time",
    "start_time",
    "end_time",
)


class TaskNotFound(NotFound):
    default_reason = "TASK_NOT_FOUND"


# Tasks --------------------------------------------------------------------------------------


def task_to_proto(row: Any, session_id: str) -> sessions_pb2.Task:
    task = parse_stored(sessions_pb2.Task, row.document)
    task.name = f"sessions/{session_id}/tasks/{row.task_id}"
    task.task_id = row.task_id
    task.parent_task_id = row.parent_task_id
    task.agent = row.agent
    task.agent_type = row.agent_type
    task.depends_on.extend(row.depends_on)
    task.priority = row.priority
    task.status = row.status
    task.output = row.output
    task.retry_count = row.retry_count
    set_time(task.create_time, row.create_time)
    set_time(task.start_time, row.start_time)
    set_time(task.end_time, row.end_time)
    return task


def _task_document(task: sessions_pb2.Task) -> bytes:
    stored = sessions_pb2.Task()
    stored.CopyFrom(task)
    for name in TASK_COLUMN_FIELDS:
        stored.ClearField(name)  # type: ignore[arg-type]
    return stored.SerializeToString()


def _find_cycle(graph: dict[str, list[str]]) -> str | None:
    """A task id on a dependency cycle among the new tasks, or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    for start in graph:
        if state.get(start):
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        state[start] = 1
        while stack:
            node, index = stack[-1]
            edges = graph.get(node, [])
            if index < len(edges):
                stack[-1] = (node, index + 1)
                nxt = edges[index]
                if nxt not in graph:
                    continue
                if state.get(nxt) == 1:
                    return nxt
                if not state.get(nxt):
                    state[nxt] = 1
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                stack.pop()
    return None


class TaskStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def batch_create(
        self, tenant: str, request: memory_pb2.BatchCreateTasksRequest
    ) -> memory_pb2.BatchCreateTasksResponse:
        session_id = parse_session_name(request.parent, "parent")
        if not request.tasks:
            raise invalid("tasks", "must not be empty")
        if len(request.tasks) > MAX_BATCH:
            raise invalid("tasks", f"at most {MAX_BATCH} per call")
        found: list[FieldViolation] = []
        ids: list[str] = []
        for index, task in enumerate(request.tasks):
            prefix = f"tasks[{index}]"
            try:
                ids.append(parse_loose_id(task.task_id, f"{prefix}.task_id", "task id"))
            except Exception as error:
                found.extend(getattr(error, "violations", ()))
                continue
            if task.name and task.name != f"sessions/{session_id}/tasks/{task.task_id}":
                found.append(FieldViolation(f"{prefix}.name", "does not match parent and task_id"))
            if task.task_id in task.depends_on:
                found.append(
                    FieldViolation(f"{prefix}.depends_on", "a task cannot depend on itself")
                )
            if task.parent_task_id == task.task_id:
                found.append(
                    FieldViolation(f"{prefix}.parent_task_id", "cannot be the task itself")
                )
            if task.status not in sessions_pb2.TaskStatus.values():
                found.append(FieldViolation(f"{prefix}.status", "unknown status"))
            if task.agent_type not in agents_pb2.AgentType.values():
                found.append(FieldViolation(f"{prefix}.agent_type", "unknown agent type"))
            if task.retry_count < 0:
                found.append(FieldViolation(f"{prefix}.retry_count", "must not be negative"))
            if len(task.depends_on) > MAX_BATCH:
                found.append(FieldViolation(f"{prefix}.depends_on", "too many dependencies"))
            if task.ByteSize() > MAX_TASK_BYTES:
                found.append(FieldViolation(prefix, f"at most {MAX_TASK_BYTES} bytes"))
        if len(set(ids)) != len(ids):
            found.append(FieldViolation("tasks", "task ids must be unique within the batch"))
        if not found:
            cycle = _find_cycle({t.task_id: list(t.depends_on) for t in request.tasks})
            if cycle is not None:
                found.append(FieldViolation("tasks", f"dependency cycle through task {cycle!r}"))
        if found:
            raise invalid_many(found)

        async def create(conn: AsyncConnection) -> memory_pb2.BatchCreateTasksResponse:
            session_pk = await load_session_pk(conn, tenant, session_id, lock=True)
            existing = set(
                (
                    await conn.execute(
                        sa.select(tasks.c.task_id).where(tasks.c.session_pk == session_pk)
                    )
                ).scalars()
            )
            clash = existing.intersection(ids)
            if clash:
                raise AlreadyExists(
                    f"task 'sessions/{session_id}/tasks/{sorted(clash)[0]}' already exists",
                    reason="TASK_EXISTS",
                )
            known = existing.union(ids)
            missing: list[FieldViolation] = []
            for index, task in enumerate(request.tasks):
                for dep in task.depends_on:
                    if dep not in known:
                        missing.append(
                            FieldViolation(f"tasks[{index}].depends_on", f"unknown task {dep!r}")
                        )
                if task.parent_task_id and task.parent_task_id not in known:
                    missing.append(
                        FieldViolation(
                            f"tasks[{index}].parent_task_id",
                            f"unknown task {task.parent_task_id!r}",
                        )
                    )
            if missing:
                raise invalid_many(missing)
            now = self._context.now()
            rows = [
                {
                    "tenant_id": tenant,
                    "session_pk": session_pk,
                    "task_id": task.task_id,
                    "parent_task_id": task.parent_task_id,
                    "agent": task.agent,
                    "agent_type": task.agent_type,
                    "status": task.status or T_PENDING,
                    "priority": task.priority,
                    "retry_count": task.retry_count,
                    "depends_on": list(task.depends_on),
                    "document": _task_document(task),
                    "output": task.output,
                    "create_time": now,
                }
                for task in request.tasks
            ]
            await conn.execute(sa.insert(tasks), rows)
            stored = (
                await conn.execute(
                    sa.select(tasks)
                    .where(tasks.c.session_pk == session_pk, tasks.c.task_id.in_(ids))
                    .order_by(tasks.c.id)
                )
            ).all()
            return memory_pb2.BatchCreateTasksResponse(
                tasks=[task_to_proto(r, session_id) for r in stored]
            )

        return await self._context.idempotent(
            tenant,
            "BatchCreateTasks",
            request.request_id,
            request,
            memory_pb2.BatchCreateTasksResponse,
            create,
        )

    async def update(
        self, tenant: str, request: memory_pb2.UpdateTaskRequest
    ) -> memory_pb2.UpdateTaskResponse:
        session_id, task_id = parse_task_name(request.task.name, "task.name")
        paths = list(request.update_mask.paths)
        if not paths:
            raise invalid("update_mask", "must name the fields to change")
        for path in paths:
            if path not in TASK_UPDATABLE:
                raise invalid("update_mask", f"{path!r} cannot be updated")
        change = request.task
        if "status" in paths and (
            change.status == sessions_pb2.TASK_STATUS_UNSPECIFIED
            or change.status not in sessions_pb2.TaskStatus.values()
        ):
            raise invalid("task.status", "must be a known status")
        if "retry_count" in paths and change.retry_count < 0:
            raise invalid("task.retry_count", "must not be negative")
        if len(change.output) > MAX_CONTENT:
            raise invalid("task.output", f"at most {MAX_CONTENT} characters")
        if len(change.agent) > 255:
            raise invalid("task.agent", "at most 255 characters")
        doc_mask = field_mask_pb2.FieldMask(paths=[p for p in paths if p in ("error", "usage")])

        async def update(conn: AsyncConnection) -> memory_pb2.UpdateTaskResponse:
            session_pk = await load_session_pk(conn, tenant, session_id)
            row = (
                await conn.execute(
                    sa.select(tasks)
                    .where(tasks.c.session_pk == session_pk, tasks.c.task_id == task_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                name = f"sessions/{session_id}/tasks/{task_id}"
                raise TaskNotFound(f"task {name!r} not found", metadata={"task": name})
            now = self._context.now()
            values: dict[str, Any] = {}
            if "status" in paths and change.status != row.status:
                if change.status not in TASK_TRANSITIONS.get(row.status, frozenset()):
                    raise FailedPrecondition(
                        f"task {task_id!r} cannot go from {T.Name(row.status)} to "
                        f"{T.Name(change.status)}",
                        reason="INVALID_STATUS_TRANSITION",
                        metadata={"from": T.Name(row.status), "to": T.Name(change.status)},
                    )
                values["status"] = change.status
                if (row.status, change.status) in RETRIES:
                    values["retry_count"] = row.retry_count + 1
                    values["end_time"] = None
                if change.status == T_RUNNING:
                    values["start_time"] = now
                if change.status in TASK_ENDED:
                    values["end_time"] = now
            if "retry_count" in paths:
                values["retry_count"] = change.retry_count
            if "output" in paths:
                values["output"] = change.output
            if "agent" in paths:
                values["agent"] = change.agent
            if doc_mask.paths:
                task = parse_stored(sessions_pb2.Task, row.document)
                doc_mask.MergeMessage(change, task, replace_message_field=True)
                values["document"] = _task_document(task)
            if values:
                await conn.execute(sa.update(tasks).where(tasks.c.id == row.id).values(**values))
            stored = (await conn.execute(sa.select(tasks).where(tasks.c.id == row.id))).one()
            return memory_pb2.UpdateTaskResponse(task=task_to_proto(stored, session_id))

        return await self._context.idempotent(
            tenant, "UpdateTask", request.request_id, request, memory_pb2.UpdateTaskResponse, update
        )

    async def list(
        self, tenant: str, request: memory_pb2.ListTasksRequest
    ) -> memory_pb2.ListTasksResponse:
        session_id = parse_session_name(request.parent, "parent")
        size = page_size(request.page_size)
        if request.status not in sessions_pb2.TaskStatus.values():
            raise invalid("status", "unknown status")
        query_key = ("tasks", session_id, request.status)
        token = PageToken.decode(request.page_token, query_key)
        async with self._db.read("ListTasks") as conn:
            session_pk = await load_session_pk(conn, tenant, session_id)
            query = sa.select(tasks).where(tasks.c.session_pk == session_pk)
            if request.status:
                query = query.where(tasks.c.status == request.status)
            if token is not None:
                if not isinstance(token.after, int):
                    raise invalid("page_token", "is not a token returned by this list")
                query = query.where(tasks.c.id > token.after)
            rows = (await conn.execute(query.order_by(tasks.c.id).limit(size + 1))).all()
        response = memory_pb2.ListTasksResponse(
            tasks=[task_to_proto(r, session_id) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response
