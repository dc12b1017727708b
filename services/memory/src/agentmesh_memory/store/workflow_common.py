"""What the workflow stores share: names, errors, JSON objects, and the workflow row lock.

A leaf module: ``workflows``, ``tokens``, ``workflow_events``, ``due_work`` and ``schedules``
import it and not each other's internals.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format, struct_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh_common import Aborted, AlreadyExists, FailedPrecondition, NotFound
from agentmesh_memory.db.database import Database
from agentmesh_memory.db.workflow_tables import workflow_tokens, workflows
from agentmesh_memory.names import ID_PATTERN, invalid

__all__ = [
    "MAX_STRUCT_DEPTH",
    "PLACE_PATTERN",
    "ClaimLost",
    "LockedWorkflow",
    "RevisionMismatch",
    "ScheduleExists",
    "ScheduleNotFound",
    "TokenExists",
    "TokenNotFound",
    "WorkflowExists",
    "WorkflowNotFound",
    "check_place",
    "find_token_pk",
    "generated_id",
    "json_object",
    "lock_workflow",
    "parse_resource_id",
    "parse_schedule_name",
    "parse_token_name",
    "parse_workflow_name",
    "schedule_not_found",
    "struct_of",
    "token_name",
    "token_not_found",
    "workflow_name",
    "workflow_not_found",
]

PLACE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}")
MAX_STRUCT_DEPTH = 24  # JSON levels; protobuf itself parses at most ~32 (100 message levels)


class WorkflowNotFound(NotFound):
    default_reason = "WORKFLOW_NOT_FOUND"


class TokenNotFound(NotFound):
    default_reason = "TOKEN_NOT_FOUND"


class WorkflowExists(AlreadyExists):
    default_reason = "WORKFLOW_EXISTS"


class TokenExists(AlreadyExists):
    default_reason = "TOKEN_EXISTS"


class ScheduleNotFound(NotFound):
    default_reason = "SCHEDULE_NOT_FOUND"


class ScheduleExists(AlreadyExists):
    default_reason = "SCHEDULE_EXISTS"


class RevisionMismatch(Aborted):
    default_reason = "REVISION_MISMATCH"


class ClaimLost(FailedPrecondition):
    default_reason = "CLAIM_LOST"


def workflow_name(workflow_id: str) -> str:
    return f"workflows/{workflow_id}"


def token_name(workflow_id: str, token_id: str) -> str:
    return f"workflows/{workflow_id}/tokens/{token_id}"


def generated_id(prefix: str) -> str:
    """A fresh id that fits ``[a-z][a-z0-9-]{0,62}`` (a letter first, then hex)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def parse_resource_id(value: str, field: str, what: str) -> str:
    if not value:
        raise invalid(field, f"{what} must not be empty")
    if ID_PATTERN.fullmatch(value) is None:
        raise invalid(field, f"{what} {value[:80]!r} must match {ID_PATTERN.pattern}")
    return value


def parse_workflow_name(value: str, field: str = "name") -> str:
    """``workflows/{workflow_id}`` -> workflow_id."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != "workflows":
        raise invalid(field, f"{value[:120]!r} is not of the form 'workflows/{{workflow_id}}'")
    return parse_resource_id(parts[1], field, "workflow id")


def parse_token_name(value: str, field: str = "name") -> tuple[str, str]:
    """``workflows/{workflow_id}/tokens/{token_id}`` -> (workflow_id, token_id)."""
    parts = value.split("/")
    if len(parts) != 4 or parts[0] != "workflows" or parts[2] != "tokens":
        raise invalid(
            field,
            f"{value[:120]!r} is not of the form 'workflows/{{workflow_id}}/tokens/{{token_id}}'",
        )
    return (
        parse_resource_id(parts[1], field, "workflow id"),
        parse_resource_id(parts[3], field, "token id"),
    )


def parse_schedule_name(value: str, field: str = "name") -> str:
    """``schedules/{schedule_id}`` -> schedule_id."""
    parts = value.split("/")
    if len(parts) != 2 or parts[0] != "schedules":
        raise invalid(field, f"{value[:120]!r} is not of the form 'schedules/{{schedule_id}}'")
    return parse_resource_id(parts[1], field, "schedule id")


def schedule_not_found(schedule_id: str) -> ScheduleNotFound:
    name = f"schedules/{schedule_id}"
    return ScheduleNotFound(f"schedule {name!r} not found", metadata={"schedule": name})


def check_place(value: str, field: str) -> str:
    if not value:
        raise invalid(field, "must not be empty")
    if PLACE_PATTERN.fullmatch(value) is None:
        raise invalid(field, f"place {value[:80]!r} must match {PLACE_PATTERN.pattern}")
    return value


def json_object(value: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A Struct as a JSON object; INVALID_ARGUMENT when nested too deep or not finite."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, struct_pb2.Struct):
            if depth > MAX_STRUCT_DEPTH:
                raise invalid(field, f"nests deeper than {MAX_STRUCT_DEPTH} levels")
            stack.extend((item, depth) for item in node.fields.values())
        elif isinstance(node, struct_pb2.ListValue):
            if depth > MAX_STRUCT_DEPTH:
                raise invalid(field, f"nests deeper than {MAX_STRUCT_DEPTH} levels")
            stack.extend((item, depth) for item in node.values)
        else:  # a Value
            kind = node.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((node.struct_value, depth + 1))
            elif kind == "list_value":
                stack.append((node.list_value, depth + 1))
            elif kind == "number_value" and not math.isfinite(node.number_value):
                raise invalid(field, "numbers must be finite (JSON has no NaN or infinity)")
    result: dict[str, Any] = json_format.MessageToDict(value)
    return result


def struct_of(value: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if value:
        struct.update(value)
    return struct


class LockedWorkflow:
    """A workflow row, locked for the rest of the transaction (PostgreSQL ``FOR UPDATE``).

    Every change of a workflow's tokens or events takes this lock first, so they are
    serialized per workflow: events get consecutive seqs and commit in seq order, and a
    definition update sees every token move committed before it.
    """

    def __init__(self, row: Any) -> None:
        self.pk = int(row.id)
        self.workflow_id = str(row.workflow_id)
        self.places: frozenset[str] = frozenset(row.places or ())
        self.revision = int(row.revision)

    @property
    def name(self) -> str:
        return workflow_name(self.workflow_id)

    def require_place(self, place: str, field: str) -> None:
        if place not in self.places:
            raise invalid(
                field,
                f"{place[:80]!r} is not a place of {self.name} (revision {self.revision})",
            )


async def lock_workflow(
    conn: AsyncConnection, db: Database, tenant: str, workflow_id: str
) -> LockedWorkflow:
    query = sa.select(
        workflows.c.id, workflows.c.workflow_id, workflows.c.places, workflows.c.revision
    ).where(workflows.c.tenant_id == tenant, workflows.c.workflow_id == workflow_id)
    if db.dialect == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise workflow_not_found(workflow_id)
    return LockedWorkflow(row)


def workflow_not_found(workflow_id: str) -> WorkflowNotFound:
    name = workflow_name(workflow_id)
    return WorkflowNotFound(f"workflow {name!r} not found", metadata={"workflow": name})


def token_not_found(workflow_id: str, token_id: str) -> TokenNotFound:
    name = token_name(workflow_id, token_id)
    return TokenNotFound(f"token {name!r} not found", metadata={"token": name})


async def find_token_pk(conn: AsyncConnection, tenant: str, workflow_id: str, token_id: str) -> int:
    """The row of a tenant's token; NOT_FOUND for an unknown or foreign one."""
    pk = (
        await conn.execute(
            sa.select(workflow_tokens.c.id)
            .join(workflows, workflows.c.id == workflow_tokens.c.workflow_pk)
            .where(
                workflows.c.tenant_id == tenant,
                workflows.c.workflow_id == workflow_id,
                workflow_tokens.c.token_id == token_id,
            )
        )
    ).scalar()
    if pk is None:
        raise token_not_found(workflow_id, token_id)
    return int(pk)
