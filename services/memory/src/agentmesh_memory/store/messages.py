"""A session's messages: the shared conversation, and messages agents address to each other.

A message with recipients (`StoredMessage.recipients`, seed 002's inter-agent messages) keeps
its type and is listed apart: `MESSAGE_AUDIENCE_SHARED` is the conversation every agent sees,
`MESSAGE_AUDIENCE_ADDRESSED` with a participant is what one agent sent or receives. The
recipients are rows of `message_recipients`, so "to this agent" is an indexed lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import messages_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import AlreadyExists, FieldViolation
from agentmesh_memory.db.tables import message_recipients, messages
from agentmesh_memory.names import (
    MAX_PAGE_SIZE,
    PageToken,
    invalid,
    invalid_many,
    new_id,
    page_size,
    parse_loose_id,
    parse_session_name,
)

from .base import StoreContext, Write, parse_stored, set_time
from .sessions import load_session_pk

__all__ = ["MessageStore"]

MAX_BATCH = 1000
MAX_CONTENT = 1024 * 1024
MAX_RECIPIENTS = 16
SHARED = memory_pb2.MESSAGE_AUDIENCE_SHARED
ADDRESSED = memory_pb2.MESSAGE_AUDIENCE_ADDRESSED


def _message_to_proto(
    row: Any, session_id: str, recipients: Sequence[str] = ()
) -> memory_pb2.StoredMessage:
    stored = memory_pb2.StoredMessage(
        name=f"sessions/{session_id}/messages/{row.message_id}",
        message=parse_stored(messages_pb2.Message, row.document),
        agent=row.agent,
        task_id=row.task_id,
        round=row.round,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        recipients=recipients,
        type=row.type,
    )
    set_time(stored.create_time, row.create_time)
    return stored


def _message_id(name: str, session_id: str, field: str) -> str:
    prefix = f"sessions/{session_id}/messages/"
    if not name.startswith(prefix):
        raise invalid(field, f"must be '{prefix}{{message_id}}' or empty")
    return parse_loose_id(name.removeprefix(prefix), field, "message id")


def _violations(index: int, item: memory_pb2.StoredMessage) -> list[FieldViolation]:
    prefix = f"messages[{index}]"
    found: list[FieldViolation] = []
    message = item.message
    if message.role == messages_pb2.ROLE_UNSPECIFIED:
        found.append(FieldViolation(f"{prefix}.message.role", "must be set"))
    elif message.role not in messages_pb2.Role.values():
        found.append(FieldViolation(f"{prefix}.message.role", "unknown role"))
    if len(message.content) > MAX_CONTENT:
        found.append(
            FieldViolation(f"{prefix}.message.content", f"at most {MAX_CONTENT} characters")
        )
    for name in ("prompt_tokens", "completion_tokens", "round"):
        if getattr(item, name) < 0:
            found.append(FieldViolation(f"{prefix}.{name}", "must not be negative"))
    if len(item.agent) > 255 or len(item.task_id) > 63:
        found.append(FieldViolation(prefix, "agent or task_id too long"))
    if item.type not in messages_pb2.MessageType.values():
        found.append(FieldViolation(f"{prefix}.type", "unknown message type"))
    if len(item.recipients) > MAX_RECIPIENTS:
        found.append(FieldViolation(f"{prefix}.recipients", f"at most {MAX_RECIPIENTS}"))
    if any(not r.strip() or len(r) > 255 for r in item.recipients):
        found.append(FieldViolation(f"{prefix}.recipients", "names of 1 to 255 characters"))
    if len(set(item.recipients)) != len(item.recipients):
        found.append(FieldViolation(f"{prefix}.recipients", "each recipient once"))
    if item.recipients and not item.agent:
        found.append(FieldViolation(f"{prefix}.agent", "an addressed message needs its author"))
    return found


class MessageStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def append(
        self, tenant: str, request: memory_pb2.AppendMessagesRequest
    ) -> memory_pb2.AppendMessagesResponse:
        session_id = parse_session_name(request.parent, "parent")
        write = self.prepare_append(tenant, session_id, request.messages)
        return await self._context.idempotent(
            tenant,
            "AppendMessages",
            request.request_id,
            request,
            memory_pb2.AppendMessagesResponse,
            write.run,
        )

    def prepare_append(
        self, tenant: str, session_id: str, batch: Sequence[memory_pb2.StoredMessage]
    ) -> Write[memory_pb2.AppendMessagesResponse]:
        """Validate messages for the session; the write adds them and returns them as stored.

        Violations name ``messages[i]``, the field of both requests that carry messages.
        """
        if not batch:
            raise invalid("messages", "must not be empty")
        if len(batch) > MAX_BATCH:
            raise invalid("messages", f"at most {MAX_BATCH} per call")
        found: list[FieldViolation] = []
        ids: list[str] = []
        for index, item in enumerate(batch):
            found.extend(_violations(index, item))
            ids.append(
                _message_id(item.name, session_id, f"messages[{index}].name")
                if item.name
                else new_id()
            )
        if len(set(ids)) != len(ids):
            found.append(FieldViolation("messages", "message ids must be unique"))
        if found:
            raise invalid_many(found)

        chosen = [message_id for message_id, item in zip(ids, batch, strict=True) if item.name]
        addressed = any(item.recipients for item in batch)

        async def append(conn: AsyncConnection) -> memory_pb2.AppendMessagesResponse:
            session_pk = await load_session_pk(conn, tenant, session_id)
            if chosen:  # ids the service makes up are new; a caller's may be taken
                clash = (
                    await conn.execute(
                        sa.select(messages.c.message_id).where(
                            messages.c.session_pk == session_pk, messages.c.message_id.in_(chosen)
                        )
                    )
                ).scalar()
                if clash is not None:
                    raise AlreadyExists(
                        f"message 'sessions/{session_id}/messages/{clash}' already exists",
                        reason="MESSAGE_EXISTS",
                    )
            now = self._context.now()
            rows = [
                {
                    "tenant_id": tenant,
                    "session_pk": session_pk,
                    "message_id": message_id,
                    "role": item.message.role,
                    "agent": item.agent,
                    "task_id": item.task_id,
                    "round": item.round,
                    "prompt_tokens": item.prompt_tokens,
                    "completion_tokens": item.completion_tokens,
                    "document": item.message.SerializeToString(),
                    "create_time": now,
                    "type": item.type,
                    "addressed": bool(item.recipients),
                }
                for message_id, item in zip(ids, batch, strict=True)
            ]
            if not addressed:
                await conn.execute(sa.insert(messages), rows)
            else:
                inserted = await conn.execute(
                    sa.insert(messages).returning(
                        messages.c.id, messages.c.message_id, sort_by_parameter_order=True
                    ),
                    rows,
                )
                pks = {row.message_id: int(row.id) for row in inserted}
                await conn.execute(
                    sa.insert(message_recipients),
                    [
                        {
                            "message_pk": pks[message_id],
                            "recipient": recipient,
                            "session_pk": session_pk,
                            "tenant_id": tenant,
                        }
                        for message_id, item in zip(ids, batch, strict=True)
                        for recipient in item.recipients
                    ],
                )
            response = memory_pb2.AppendMessagesResponse()
            for message_id, item in zip(ids, batch, strict=True):
                stored = response.messages.add()
                stored.CopyFrom(item)
                stored.name = f"sessions/{session_id}/messages/{message_id}"
                stored.create_time.FromDatetime(now)
            return response

        return Write(append)

    async def list(
        self, tenant: str, request: memory_pb2.ListMessagesRequest
    ) -> memory_pb2.ListMessagesResponse:
        session_id = parse_session_name(request.parent, "parent")
        if request.newest < 0 or request.newest > MAX_PAGE_SIZE:
            raise invalid("newest", f"must be between 0 and {MAX_PAGE_SIZE}")
        if request.audience not in memory_pb2.MessageAudience.values():
            raise invalid("audience", "unknown audience")
        if request.participant and request.audience != ADDRESSED:
            raise invalid("participant", "only with the audience MESSAGE_AUDIENCE_ADDRESSED")
        if len(request.participant) > 255:
            raise invalid("participant", "at most 255 characters")
        size = page_size(request.page_size)
        query_key = ("messages", session_id, request.audience, request.participant)
        token = None if request.newest else PageToken.decode(request.page_token, query_key)
        async with self._db.read("ListMessages") as conn:
            session_pk = await load_session_pk(conn, tenant, session_id)
            query = sa.select(messages).where(messages.c.session_pk == session_pk)
            if request.audience == SHARED:
                query = query.where(messages.c.addressed.is_(False))
            elif request.audience == ADDRESSED:
                query = query.where(messages.c.addressed.is_(True))
                if request.participant:
                    to_participant = sa.select(message_recipients.c.message_pk).where(
                        message_recipients.c.session_pk == session_pk,
                        message_recipients.c.recipient == request.participant,
                    )
                    query = query.where(
                        sa.or_(
                            messages.c.agent == request.participant,
                            messages.c.id.in_(to_participant),
                        )
                    )
            if request.newest:
                newest = (
                    await conn.execute(query.order_by(messages.c.id.desc()).limit(request.newest))
                ).all()
                rows: Sequence[Any] = list(reversed(newest))
                more = False
            else:
                if token is not None:
                    if not isinstance(token.after, int):
                        raise invalid("page_token", "is not a token returned by this list")
                    query = query.where(messages.c.id > token.after)
                fetched = (await conn.execute(query.order_by(messages.c.id).limit(size + 1))).all()
                rows, more = fetched[:size], len(fetched) > size
            recipients = await _recipients(conn, [r.id for r in rows if r.addressed])
        response = memory_pb2.ListMessagesResponse(
            messages=[_message_to_proto(r, session_id, recipients.get(r.id, ())) for r in rows]
        )
        if more:
            response.next_page_token = PageToken(int(rows[-1].id)).encode(query_key)
        return response


async def _recipients(conn: AsyncConnection, pks: Sequence[int]) -> dict[int, list[str]]:
    if not pks:
        return {}
    found: dict[int, list[str]] = {}
    rows = await conn.execute(
        sa.select(message_recipients.c.message_pk, message_recipients.c.recipient)
        .where(message_recipients.c.message_pk.in_(pks))
        .order_by(message_recipients.c.message_pk, message_recipients.c.recipient)
    )
    for row in rows:
        found.setdefault(int(row.message_pk), []).append(row.recipient)
    return found
