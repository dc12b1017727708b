"""API keys: stored hashed per tenant, resolved from a presented secret, and revocations
pushed to the replicas that cache keys (`WatchApiKeys`)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncGenerator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from agentmesh.memory.v1 import memory_pb2
from agentmesh_common import NotFound, Unauthenticated
from agentmesh_memory.db.notifier import RESET, EventNotifier, LocalNotifier
from agentmesh_memory.db.tables import api_keys
from agentmesh_memory.names import (
    PageToken,
    check_request_id,
    invalid,
    new_id,
    page_size,
    parse_api_key_name,
)

from .base import StoreContext, check_text, insert_ignore, timestamp

__all__ = ["SECRET_PREFIX", "ApiKeyStore"]

SECRET_PREFIX = "amk_"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, context: StoreContext, notifier: EventNotifier | None = None) -> None:
        self._context = context
        self._db = context.db
        self._notifier = notifier or LocalNotifier()

    @staticmethod
    def _to_proto(row: Any) -> memory_pb2.ApiKey:
        return memory_pb2.ApiKey(
            name=f"apiKeys/{row.key_id}",
            tenant=row.tenant_id,
            display_name=row.display_name,
            prefix=row.prefix,
            create_time=timestamp(row.create_time),
            last_used_time=timestamp(row.last_used_time),
        )

    async def create(
        self, tenant: str, request: memory_pb2.CreateApiKeyRequest
    ) -> memory_pb2.CreateApiKeyResponse:
        check_text(request.display_name, 255, "display_name")
        check_request_id(request.request_id)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        created: list[str] = []

        async def create(conn: AsyncConnection) -> memory_pb2.CreateApiKeyResponse:
            row = (
                await conn.execute(
                    insert_ignore(self._db, api_keys)
                    .values(
                        tenant_id=tenant,
                        key_id=new_id(),
                        display_name=request.display_name,
                        prefix=secret[:12],
                        secret_hash=_hash(secret),
                        create_time=self._context.now(),
                    )
                    .returning(*api_keys.c)
                )
            ).one()
            created.append(secret)
            # Stored for request_id replays without the secret: only its hash is ever kept.
            return memory_pb2.CreateApiKeyResponse(api_key=self._to_proto(row))

        response = await self._context.idempotent(
            tenant,
            "CreateApiKey",
            request.request_id,
            request,
            memory_pb2.CreateApiKeyResponse,
            create,
        )
        if created:
            response.secret = created[0]
        return response

    async def list(
        self, tenant: str, request: memory_pb2.ListApiKeysRequest
    ) -> memory_pb2.ListApiKeysResponse:
        size = page_size(request.page_size)
        query_key = ("apiKeys",)
        token = PageToken.decode(request.page_token, query_key)
        query = sa.select(api_keys).where(api_keys.c.tenant_id == tenant)
        if token is not None:
            if not isinstance(token.after, int):
                raise invalid("page_token", "is not a token returned by this list")
            query = query.where(api_keys.c.id > token.after)
        async with self._db.read("ListApiKeys") as conn:
            rows = (await conn.execute(query.order_by(api_keys.c.id).limit(size + 1))).all()
        response = memory_pb2.ListApiKeysResponse(api_keys=[self._to_proto(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = PageToken(int(rows[size - 1].id)).encode(query_key)
        return response

    async def delete(
        self, tenant: str, request: memory_pb2.DeleteApiKeyRequest
    ) -> memory_pb2.DeleteApiKeyResponse:
        key_id = parse_api_key_name(request.name)
        async with self._db.write("DeleteApiKey") as conn:
            result = await conn.execute(
                sa.delete(api_keys)
                .where(api_keys.c.tenant_id == tenant, api_keys.c.key_id == key_id)
                .returning(api_keys.c.id)
            )
            if result.first() is None:
                raise NotFound(f"API key 'apiKeys/{key_id}' not found", reason="API_KEY_NOT_FOUND")
            # Every replica's key watchers hear of it once this commits (PostgreSQL NOTIFY).
            notify = self._notifier.key_revocation(f"apiKeys/{key_id}")
            if notify is not None:
                await conn.execute(notify)
        self._notifier.key_revoked(f"apiKeys/{key_id}")
        return memory_pb2.DeleteApiKeyResponse()

    async def watch(self) -> AsyncGenerator[memory_pb2.WatchApiKeysResponse, None]:
        """Revoked keys as they are revoked, after a first `reset` once the watch is set;
        ends when the service stops (`end_watches`)."""
        with self._notifier.watch_keys() as changes:
            yield memory_pb2.WatchApiKeysResponse(reset=True)
            while True:
                names = [await changes.get()]
                while not changes.empty():
                    names.append(changes.get_nowait())
                revoked = [n for n in dict.fromkeys(names) if n is not None and n != RESET]
                if revoked or RESET in names:
                    yield memory_pb2.WatchApiKeysResponse(revoked=revoked, reset=RESET in names)
                if None in names:
                    return  # the service is stopping

    def end_watches(self) -> None:
        """End every key watch (the service is stopping: they would only hold the drain)."""
        self._notifier.end_key_watches()

    async def authenticate(
        self, request: memory_pb2.AuthenticateApiKeyRequest
    ) -> memory_pb2.AuthenticateApiKeyResponse:
        secret = request.secret
        if not secret or len(secret) > 256:
            raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
        async with self._db.write("AuthenticateApiKey") as conn:
            row = (
                await conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.secret_hash == _hash(secret))
                    .values(last_used_time=self._context.now())
                    .returning(*api_keys.c)
                )
            ).first()
        if row is None:
            raise Unauthenticated("invalid API key", reason="API_KEY_INVALID")
        return memory_pb2.AuthenticateApiKeyResponse(api_key=self._to_proto(row))
