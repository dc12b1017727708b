"""Agent memory entries and user settings (API keys: `api_keys.py`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from google.protobuf import field_mask_pb2, json_format, struct_pb2
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.common.v1 import agents_pb2, memory_entries_pb2, user_settings_pb2
from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import NotFound
from agentmesh_memory.db.tables import (
    agent_memory,
    request_log,
    user_settings,
)
from agentmesh_memory.names import (
    MemoryName,
    PageToken,
    invalid,
    page_size,
    parse_memory_name,
    parse_memory_parent,
    parse_settings_name,
)

from .base import (
    StoreContext,
    check_text,
    parse_stored,
    set_time,
    timedelta_of,
    to_datetime,
    upsert,
)
from .owners import RESERVED_MEMORY_AGENTS, require_agent, value_size

__all__ = [
    "RESERVED_MEMORY_AGENTS",
    "MemoryNotFound",
    "MemoryStore",
    "SettingsStore",
    "live",
    "memory_to_proto",
    "require_agent",
    "value_size",
]

MAX_VALUE_BYTES = 256 * 1024
MAX_TTL = timedelta(days=3650)
SETTINGS_FIELDS = ("default_route", "default_models", "model_preference", "rag_archives")


class MemoryNotFound(NotFound):
    default_reason = "MEMORY_NOT_FOUND"


def memory_to_proto(row: Any) -> memory_entries_pb2.MemoryEntry:
    entry = memory_entries_pb2.MemoryEntry(
        name=MemoryName(row.agent_id, row.user_id, row.key).render(),
        type=row.type,
        value=json_format.ParseDict(row.value, struct_pb2.Value()),
        access_count=row.access_count,
    )
    set_time(entry.expire_time, row.expire_time)
    set_time(entry.create_time, row.create_time)
    set_time(entry.update_time, row.update_time)
    set_time(entry.access_time, row.access_time)
    return entry


def live(now: Any) -> Any:
    return sa.or_(agent_memory.c.expire_time.is_(None), agent_memory.c.expire_time > now)


class MemoryStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    def _where(self, tenant: str, name: MemoryName) -> list[Any]:
        return [
            agent_memory.c.tenant_id == tenant,
            agent_memory.c.agent_id == name.agent_id,
            agent_memory.c.user_id == name.user_id,
            agent_memory.c.key == name.key,
        ]

    @staticmethod
    def _not_found(name: MemoryName) -> MemoryNotFound:
        rendered = name.render()
        return MemoryNotFound(f"memory {rendered!r} not found", metadata={"memory": rendered})

    async def put(
        self, tenant: str, request: memory_pb2.PutMemoryRequest
    ) -> memory_pb2.PutMemoryResponse:
        entry = request.entry
        name = parse_memory_name(entry.name, "entry.name")
        if entry.type == agents_pb2.MEMORY_TYPE_UNSPECIFIED:
            raise invalid("entry.type", "must be set")
        if entry.type not in agents_pb2.MemoryType.values():
            raise invalid("entry.type", "unknown memory type")
        if not entry.HasField("value"):
            raise invalid("entry.value", "must be set")
        if entry.value.ByteSize() > MAX_VALUE_BYTES:
            raise invalid(
                "entry.value", f"is {entry.value.ByteSize()} bytes; at most {MAX_VALUE_BYTES}"
            )
        value = json_format.MessageToDict(entry.value)
        ttl = timedelta_of(request.ttl) if request.HasField("ttl") else None
        if ttl is not None and (ttl <= timedelta(0) or ttl > MAX_TTL):
            raise invalid("ttl", "must be more than 0 and at most 10 years")
        fixed_expiry = to_datetime(entry.expire_time) if entry.HasField("expire_time") else None

        async def put(conn: AsyncConnection) -> memory_pb2.PutMemoryResponse:
            await require_agent(conn, tenant, name.agent_id)
            now = self._context.now()
            expires = now + ttl if ttl is not None else fixed_expiry
            if expires is not None and expires <= now:
                raise invalid("entry.expire_time", "must be in the future")
            # An expired entry is gone: writing the key again starts a new entry.
            await conn.execute(
                sa.delete(agent_memory).where(
                    *self._where(tenant, name), agent_memory.c.expire_time <= now
                )
            )
            statement = upsert(self._db, agent_memory).values(
                tenant_id=tenant,
                agent_id=name.agent_id,
                user_id=name.user_id,
                key=name.key,
                type=entry.type,
                value=value,
                expire_time=expires,
                create_time=now,
                update_time=now,
                access_count=0,
                value_bytes=value_size(value),
            )
            statement = statement.on_conflict_do_update(
                index_elements=["tenant_id", "agent_id", "user_id", "key"],
                set_={
                    "type": statement.excluded.type,
                    "value": statement.excluded.value,
                    "expire_time": statement.excluded.expire_time,
                    "update_time": statement.excluded.update_time,
                    "value_bytes": statement.excluded.value_bytes,
                },
            ).returning(*agent_memory.c)
            row = (await conn.execute(statement)).one()
            return memory_pb2.PutMemoryResponse(entry=memory_to_proto(row))

        return await self._context.idempotent(
            tenant, "PutMemory", request.request_id, request, memory_pb2.PutMemoryResponse, put
        )

    async def get(
        self, tenant: str, request: memory_pb2.GetMemoryRequest
    ) -> memory_pb2.GetMemoryResponse:
        name = parse_memory_name(request.name)
        async with self._db.write("GetMemory") as conn:
            await require_agent(conn, tenant, name.agent_id)
            now = self._context.now()
            row = (
                await conn.execute(
                    sa.update(agent_memory)
                    .where(*self._where(tenant, name), live(now))
                    .values(access_time=now, access_count=agent_memory.c.access_count + 1)
                    .returning(*agent_memory.c)
                )
            ).first()
        if row is None:
            raise self._not_found(name)
        return memory_pb2.GetMemoryResponse(entry=memory_to_proto(row))

    async def list(
        self, tenant: str, request: memory_pb2.ListMemoriesRequest
    ) -> memory_pb2.ListMemoriesResponse:
        """One user's entries by key; for the parent ``agents/{a}/users/-`` (AIP-159) every
        user's entries of the agent, by user then key."""
        agent_id, user_id = parse_memory_parent(request.parent)
        size = page_size(request.page_size)
        if request.type not in agents_pb2.MemoryType.values():
            raise invalid("type", "unknown memory type")
        query_key = ("memories", agent_id, user_id, request.type)
        token = PageToken.decode(request.page_token, query_key)
        now = self._context.now()
        query = sa.select(agent_memory).where(
            agent_memory.c.tenant_id == tenant, agent_memory.c.agent_id == agent_id, live(now)
        )
        if user_id is not None:
            query = query.where(agent_memory.c.user_id == user_id)
        if request.type:
            query = query.where(agent_memory.c.type == request.type)
        across_users = user_id is None
        if token is not None:
            query = query.where(self._after(token, across_users=across_users))
        order = (
            [agent_memory.c.user_id, agent_memory.c.key] if across_users else [agent_memory.c.key]
        )
        query = query.order_by(*order).limit(size + 1)
        async with self._db.read("ListMemories") as conn:
            await require_agent(conn, tenant, agent_id)
            rows = (await conn.execute(query)).all()
        response = memory_pb2.ListMemoriesResponse(
            entries=[memory_to_proto(r) for r in rows[:size]]
        )
        if len(rows) > size:
            last = rows[size - 1]
            after = f"{last.user_id}/{last.key}" if across_users else last.key
            response.next_page_token = PageToken(after).encode(query_key)
        return response

    @staticmethod
    def _after(token: PageToken, *, across_users: bool) -> Any:
        """The keyset condition of a page token: after its key, or after its (user, key)."""
        if not isinstance(token.after, str):
            raise invalid("page_token", "is not a token returned by this list")
        if not across_users:
            return agent_memory.c.key > token.after
        user, slash, key = token.after.partition("/")  # neither user ids nor keys have "/"
        if not slash:
            raise invalid("page_token", "is not a token returned by this list")
        return sa.or_(
            agent_memory.c.user_id > user,
            sa.and_(agent_memory.c.user_id == user, agent_memory.c.key > key),
        )

    async def delete(
        self, tenant: str, request: memory_pb2.DeleteMemoryRequest
    ) -> memory_pb2.DeleteMemoryResponse:
        name = parse_memory_name(request.name)

        async def delete(conn: AsyncConnection) -> memory_pb2.DeleteMemoryResponse:
            await require_agent(conn, tenant, name.agent_id)
            now = self._context.now()
            result = await conn.execute(
                sa.delete(agent_memory)
                .where(*self._where(tenant, name), live(now))
                .returning(agent_memory.c.id)
            )
            if result.first() is None:
                raise self._not_found(name)
            return memory_pb2.DeleteMemoryResponse()

        return await self._context.idempotent(
            tenant,
            "DeleteMemory",
            request.request_id,
            request,
            memory_pb2.DeleteMemoryResponse,
            delete,
        )

    async def sweep(self, request_retention: timedelta) -> tuple[int, int]:
        """Delete expired memory entries and old idempotency records; returns both counts."""
        async with self._db.write("Sweep") as conn:
            now = self._context.now()
            memories = await conn.execute(
                sa.delete(agent_memory).where(agent_memory.c.expire_time <= now)
            )
            requests = await conn.execute(
                sa.delete(request_log).where(request_log.c.create_time < now - request_retention)
            )
        return int(memories.rowcount or 0), int(requests.rowcount or 0)


class SettingsStore:
    def __init__(self, context: StoreContext) -> None:
        self._context = context
        self._db = context.db

    async def get(
        self, tenant: str, request: memory_pb2.GetUserSettingsRequest
    ) -> memory_pb2.GetUserSettingsResponse:
        user_id = parse_settings_name(request.name)
        async with self._db.read("GetUserSettings") as conn:
            row = (
                await conn.execute(
                    sa.select(user_settings).where(
                        user_settings.c.tenant_id == tenant, user_settings.c.user_id == user_id
                    )
                )
            ).first()
        return memory_pb2.GetUserSettingsResponse(settings=self._to_proto(user_id, row))

    @staticmethod
    def _to_proto(user_id: str, row: Any) -> user_settings_pb2.UserSettings:
        if row is None:
            return user_settings_pb2.UserSettings(name=f"users/{user_id}/settings")
        settings = parse_stored(user_settings_pb2.UserSettings, row.document)
        settings.name = f"users/{user_id}/settings"
        set_time(settings.update_time, row.update_time)
        return settings

    async def update(
        self, tenant: str, request: memory_pb2.UpdateUserSettingsRequest
    ) -> memory_pb2.UpdateUserSettingsResponse:
        change = request.settings
        user_id = parse_settings_name(change.name, "settings.name")
        paths = list(request.update_mask.paths) or list(SETTINGS_FIELDS)
        for path in paths:
            if path not in SETTINGS_FIELDS:
                raise invalid("update_mask", f"{path!r} cannot be updated")
        if change.model_preference not in user_settings_pb2.ModelPreference.values():
            raise invalid("settings.model_preference", "unknown preference")
        if len(change.rag_archives) > 100 or any(not a.strip() for a in change.rag_archives):
            raise invalid("settings.rag_archives", "at most 100 non-empty names")
        if len(change.default_models) > 64:
            raise invalid("settings.default_models", "at most 64 entries")
        check_text(change.default_route, 255, "settings.default_route")
        mask = field_mask_pb2.FieldMask(paths=paths)

        async def update(conn: AsyncConnection) -> memory_pb2.UpdateUserSettingsResponse:
            row = (
                await conn.execute(
                    sa.select(user_settings)
                    .where(user_settings.c.tenant_id == tenant, user_settings.c.user_id == user_id)
                    .with_for_update()
                )
            ).first()
            settings = self._to_proto(user_id, row)
            mask.MergeMessage(change, settings, replace_repeated_field=True)
            if "default_models" in paths:
                settings.default_models.clear()
                settings.default_models.update(change.default_models)
            document = user_settings_pb2.UserSettings()
            document.CopyFrom(settings)
            document.ClearField("name")
            document.ClearField("update_time")
            now = self._context.now()
            statement = upsert(self._db, user_settings).values(
                tenant_id=tenant,
                user_id=user_id,
                document=document.SerializeToString(),
                update_time=now,
            )
            statement = statement.on_conflict_do_update(
                index_elements=["tenant_id", "user_id"],
                set_={"document": statement.excluded.document, "update_time": now},
            ).returning(*user_settings.c)
            stored = (await conn.execute(statement)).one()
            return memory_pb2.UpdateUserSettingsResponse(settings=self._to_proto(user_id, stored))

        return await self._context.idempotent(
            tenant,
            "UpdateUserSettings",
            request.request_id,
            request,
            memory_pb2.UpdateUserSettingsResponse,
            update,
        )
